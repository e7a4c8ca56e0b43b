"""What the planner sees of one ISVC's live load: the collector builds it from vLLM's metrics in
Prometheus, the simulator from its own replicas, the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..limits import finite_problem

Key = tuple[str, str]  # namespace, ISVC name


@dataclass(frozen=True)
class Observation:
    arrival_rate: float  # requests/second over the window
    previous_rate: float  # requests/second over the window before
    avg_in_tokens: float | None  # None: nothing completed in the window
    avg_out_tokens: float | None
    running: float
    waiting: float
    ttft_ms: float | None  # observed means, None without completions
    itl_ms: float | None
    ttft_buckets: tuple[tuple[float, float], ...]  # (upper bound s, cumulative count) over the window
    itl_buckets: tuple[tuple[float, float], ...]

    def problem(self) -> str | None:
        """Why no decision may be made from this observation (a figure not finite, negative or
        out of range), or None. The collector checks each sample; this checks what it built."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("buckets"):
                problem = next((_bucket_problem(b, c) for b, c in value if _bucket_problem(b, c)), None)
            else:
                problem = None if value is None and f.name.startswith(("avg_", "ttft", "itl")) else finite_problem(value)
            if problem:
                return f"{f.name}: {problem}"
        return None


def _bucket_problem(bound: float, count: float) -> str | None:
    return (None if bound == math.inf else finite_problem(bound)) or finite_problem(count)


def within(buckets: tuple[tuple[float, float], ...], limit_s: float) -> tuple[float, float]:
    """(observations within `limit_s`, all observations), interpolating linearly inside the
    bucket that holds the limit, as histogram_quantile() does (counting only whole buckets
    would read "all within 20 ms" as "none within 40 ms" when the bounds are 10 ms and 50 ms)."""
    if not buckets:
        return 0.0, 0.0
    total = buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if bound >= limit_s:
            if bound == float("inf"):
                return lower_count, total
            share = (limit_s - lower_bound) / (bound - lower_bound)
            return lower_count + (count - lower_count) * share, total
        lower_bound, lower_count = bound, count
    return total, total
