"""Load estimation from the counters and gauges a vLLM server exports.

Completions alone under-count arrivals while a queue builds (and over-count while it drains),
so the arrival rate over a window is completions plus drops plus the growth of requests in the
system. Token averages come from the completed requests of the window.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadCounters:
    """One reading: cumulative counters and the in-system gauge (running + waiting)."""

    time: float
    completed: float
    dropped: float
    in_system: float
    in_tokens: float  # cumulative prompt tokens of completed requests
    out_tokens: float  # cumulative generated tokens of completed requests


@dataclass(frozen=True)
class LoadEstimate:
    arrival_rate: float  # requests/second
    avg_in_tokens: float | None  # None: no request completed in the window
    avg_out_tokens: float | None


def estimate_load(earlier: LoadCounters, later: LoadCounters) -> LoadEstimate:
    window = later.time - earlier.time
    if window <= 0:
        raise ValueError("readings must be in time order")
    completed = later.completed - earlier.completed
    arrived = completed + (later.dropped - earlier.dropped) + (later.in_system - earlier.in_system)
    if completed > 0:
        avg_in = (later.in_tokens - earlier.in_tokens) / completed
        avg_out = (later.out_tokens - earlier.out_tokens) / completed
    else:
        avg_in = avg_out = None
    return LoadEstimate(max(arrived, 0.0) / window, avg_in, avg_out)
