"""Running our asyncio services: on libuv's event loop when uvloop is installed (measurably
shorter latency tails under load), on asyncio's own otherwise."""

from __future__ import annotations

import asyncio
from typing import Any, Coroutine


def run(main: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
