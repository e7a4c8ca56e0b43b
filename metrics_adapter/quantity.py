"""Kubernetes resource.Quantity strings as the HPA reads them: "7", "7500m", "-250m"."""

from __future__ import annotations

import math


def format_quantity(value: float) -> str:
    if not math.isfinite(value):
        raise ValueError(f"a quantity must be finite, got {value}")
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"
