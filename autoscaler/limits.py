"""The range every number from outside must fall in before it reaches a decision.

Prometheus samples, decision annotations, the data ConfigMap and stream messages are checked
against these at the boundary; a value outside is refused there with one clear error, so that no
product downstream overflows to infinity and nothing non-finite is ever decided or published.
"""

from __future__ import annotations

# Far beyond any real rate (requests/s), token count, cost per hour, latency (ms) or time (epoch
# s), and far enough below float's range (~1.8e308) that products and sums of them stay finite.
MAX_MAGNITUDE = 1e12
MAX_REPLICAS = 2**31 - 1  # Kubernetes' replica counts, and the decision stream's, are int32
# a profile's maxBatchSize: far above any engine's limit on concurrent sequences (vLLM's
# max-num-seqs defaults to 256-1024); the sizing's work grows with the batch, a typo must not
MAX_BATCH = 65536


def finite_problem(value: object, low: float = 0.0, high: float = MAX_MAGNITUDE) -> str | None:
    """Why `value` is not a real number within [low, high], or None when it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"expected a number, got {value!r}"
    if not low <= value <= high:  # False for NaN; exact for ints too large for a float
        return f"{value!r} is not within [{low:g}, {high:g}]"
    return None


def whole_problem(value: object, low: int = 0, high: int = MAX_REPLICAS) -> str | None:
    """Why `value` is not a whole number (an int, not a bool or float) within [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected a whole number, got {value!r}"
    if not low <= value <= high:
        return f"{value!r} is not within [{low}, {high}]"
    return None
