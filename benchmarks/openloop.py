"""Open-loop load: requests start on a fixed schedule whatever the server does, and latency is
counted from each request's scheduled start, so queueing in the server shows in the tail."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import numpy as np


async def open_loop(
    send: Callable[[], Awaitable[bool]], rate: float, seconds: float, warm_up_s: float
) -> tuple[np.ndarray, float, int]:
    """Run `send` (True on success) at `rate`/s: an unmeasured warm-up, then `seconds` measured.

    Returns the measured latencies (s), the achieved rate and the number of failures."""
    latencies: list[float] = []
    failures = 0
    measuring = False

    async def one(scheduled: float) -> None:
        nonlocal failures
        ok = await send()
        if measuring:
            failures += not ok
            latencies.append(time.perf_counter() - scheduled)

    async def paced(duration: float) -> float:
        tasks = []
        begin = time.perf_counter()
        for n in range(int(rate * duration)):
            scheduled = begin + n / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        await asyncio.gather(*tasks)
        return time.perf_counter() - begin

    await paced(warm_up_s)
    measuring = True
    elapsed = await paced(seconds)
    return np.array(latencies), int(rate * seconds) / elapsed, failures
