"""Arrival rate estimation from the counters and gauges a vLLM server exports.

Completions alone under-count arrivals while a queue builds (and over-count while it drains),
so the arrival rate over a window is completions plus drops plus the growth of requests in the
system. The request shape (mean prompt and output) is not estimated here: it is the finished
requests' own histograms (policy.observation.WindowFigures), since a token counter taken at a
different moment than the completions (vLLM counts prompt tokens at prefill) over the
completions overstates it while a queue builds.
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


@dataclass(frozen=True)
class LoadEstimate:
    arrival_rate: float  # requests/second


def estimate_load(earlier: LoadCounters, later: LoadCounters) -> LoadEstimate:
    window = later.time - earlier.time
    if window <= 0:
        raise ValueError("readings must be in time order")
    completed = later.completed - earlier.completed
    arrived = completed + (later.dropped - earlier.dropped) + (later.in_system - earlier.in_system)
    return LoadEstimate(max(arrived, 0.0) / window)
