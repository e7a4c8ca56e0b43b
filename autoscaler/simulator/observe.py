"""What a collector would observe of each simulated ISVC: vLLM's Prometheus metrics, read off
the simulation's request records, and the Observation the collector builds from them.

A scrape of a vLLM server shows cumulative counters, two gauges and cumulative histograms with
vLLM's own bucket bounds. At each control tick this reads the requests that moved since the
last tick and moves the metrics the way the server's would have moved:
- a request's first token observes its TTFT and counts its prompt tokens (prompt_tokens_total,
  which vLLM counts at prefill: code v1/metrics/stats.py, IterationStats.update_from_output);
- a finished request counts in request_success_total, observes its prompt and output lengths
  in request_prompt_tokens and request_generation_tokens and its mean gap in
  request_time_per_output_token_seconds (decode time over output - 1, 0 with one output: vLLM
  observes the four together, per finished request: stats.py,
  IterationStats.update_from_finished_request; loggers.py, PrometheusStatLogger.record), and
  adds its (output - 1) gaps and decode time to inter_token_latency_seconds' count and sum.
  vLLM observes each gap at its own step; the simulator tracks a request's decode progress,
  not every step, so its gaps count when it finishes (the window's mean gap is of the requests
  finished in it) and the ITL histogram's buckets, which the planner does not read, are not
  kept; generation_tokens_total, counted per step, is not read;
- running = admitted and unfinished (prefilling included, as vLLM's gauge), waiting = arrived and
  not admitted; requests held by the activator while no replica is ready count as waiting;
- a request its client gave up on leaves the gauges and counts nowhere, so drops go unseen, as
  in a cluster: vLLM records no statistics for aborted requests (vllm-project/vllm#55634, open;
  were it fixed, they would count in request_success_total{finished_reason="abort"}).

The window's figures are differences between scrapes, as increase() and delta() take them
between Prometheus's samples; a scrape is taken at each control tick and each queue probe: a
window reaches back to the last scrape at least `window_s` old, the window before it as far
again, and the short window (the control period, the collector's [period] range) to the last
scrape at least `recent_s` old. From there policy.observation.observe computes the
Observation, the same function the controller's collector calls.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..policy.observation import Buckets, Observation, WindowFigures, allan_factor, observe

# vLLM's bucket bounds in seconds (code v1/metrics/loggers.py; ../shared/VLLM.md section 2)
TTFT_BOUNDS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
# vLLM's bounds of both the ITL and the per-request TPOT histogram
TPOT_BOUNDS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)


@dataclass(frozen=True)
class RequestRecords:
    """The simulation's per-request lists, indexed by request and sorted by arrival; the
    engine fills in first_token and finish (nan until known) and dropped as requests move."""

    arrival: list[float]
    isvc: list[int]
    in_tokens: list[int]
    out_tokens: list[int]
    first_token: list[float]  # set on admission (to when its prefill ends)
    finish: list[float]
    dropped: list[bool]


@dataclass(frozen=True)
class Scrape:
    """One ISVC's cumulative metrics at one moment (bucket counts per bucket, +Inf last)."""

    time: float
    completed: int  # also the count of the prompt and output length histograms
    prompt_tokens: int
    prompt_len_sum: int  # request_prompt_tokens_sum
    output_len_sum: int  # request_generation_tokens_sum
    in_system: int  # running + waiting
    running: int
    waiting: int
    ttft_sum: float
    itl_sum: float  # inter_token_latency_seconds: its sum and count
    itl_count: int
    ttft_counts: np.ndarray
    tpot_counts: np.ndarray  # request_time_per_output_token_seconds


class _Counters:
    __slots__ = (
        "completed",
        "itl_count",
        "itl_sum",
        "output_len_sum",
        "prompt_len_sum",
        "prompt_tokens",
        "tpot_counts",
        "ttft_counts",
        "ttft_sum",
    )

    def __init__(self) -> None:
        self.completed = self.prompt_tokens = self.prompt_len_sum = self.output_len_sum = self.itl_count = 0
        self.ttft_sum = self.itl_sum = 0.0
        self.ttft_counts = np.zeros(len(TTFT_BOUNDS) + 1, dtype=np.int64)
        self.tpot_counts = np.zeros(len(TPOT_BOUNDS) + 1, dtype=np.int64)


class VllmMetrics:
    """The metrics every simulated ISVC's vLLM servers export together, scraped at each tick."""

    def __init__(self, records: RequestRecords, isvcs: int):
        self.records = records
        self._next = 0  # first request not yet arrived
        self._open: list[list[int]] = [[] for _ in range(isvcs)]  # arrived, neither finished nor dropped
        self._first_seen = bytearray(len(records.arrival))
        self._counters = [_Counters() for _ in range(isvcs)]

    def scrape(self, now: float) -> list[Scrape]:
        r = self.records
        while self._next < len(r.arrival) and r.arrival[self._next] <= now:
            self._open[r.isvc[self._next]].append(self._next)
            self._next += 1
        return [self._scrape_one(now, index) for index in range(len(self._open))]

    def _scrape_one(self, now: float, index: int) -> Scrape:
        r, c, seen = self.records, self._counters[index], self._first_seen
        still, running = [], 0
        for request in self._open[index]:
            if r.dropped[request]:
                continue
            first = r.first_token[request]
            if math.isnan(first):
                still.append(request)
                continue
            if first <= now and not seen[request]:
                seen[request] = 1
                ttft = first - r.arrival[request]
                c.ttft_sum += ttft
                c.ttft_counts[bisect.bisect_left(TTFT_BOUNDS, ttft)] += 1
                c.prompt_tokens += r.in_tokens[request]
            if r.finish[request] <= now:  # False while nan: not finished
                out = r.out_tokens[request]
                c.completed += 1
                c.prompt_len_sum += r.in_tokens[request]
                c.output_len_sum += out
                tpot = 0.0
                if out > 1:
                    decode = r.finish[request] - first
                    c.itl_sum += decode
                    c.itl_count += out - 1
                    tpot = decode / (out - 1)
                c.tpot_counts[bisect.bisect_left(TPOT_BOUNDS, tpot)] += 1
                continue
            running += 1
            still.append(request)
        self._open[index] = still
        return Scrape(
            now,
            c.completed,
            c.prompt_tokens,
            c.prompt_len_sum,
            c.output_len_sum,
            len(still),
            running,
            len(still) - running,
            c.ttft_sum,
            c.itl_sum,
            c.itl_count,
            c.ttft_counts.copy(),
            c.tpot_counts.copy(),
        )


def _increase(later: np.ndarray, earlier: np.ndarray, bounds: tuple[float, ...]) -> Buckets:
    cumulative = np.cumsum(later - earlier)
    return tuple(zip((*bounds, math.inf), cumulative.astype(float).tolist(), strict=True))


class Observer:
    """Scrapes at every tick and queue probe and keeps the scrapes its windows reach back to."""

    def __init__(self, records: RequestRecords, isvcs: int, window_s: float, recent_s: float | None = None, start: float = 0.0):
        self.metrics = VllmMetrics(records, isvcs)
        self.window_s = window_s
        self.recent_s = recent_s
        self.history: list[list[Scrape]] = [[s] for s in self.metrics.scrape(start)]

    def in_system(self, now: float) -> list[int]:
        """The requests running + waiting now per ISVC (vLLM's two gauges). The scrape is kept:
        Prometheus scrapes on its own interval, not at the controller's cycles, so a window
        reaches back to a scrape within a probe of its length (at the cycles' scrapes only,
        early cycles 15 s apart made windows of 60 to 90 s, and a rate over 75 s compared
        with one over 60 s read as a rise)."""
        scrapes = self.metrics.scrape(now)
        for history, scrape in zip(self.history, scrapes, strict=True):
            history.append(scrape)
        return [s.in_system for s in scrapes]

    def observe(self, now: float) -> list[Observation]:
        """One Observation per ISVC (in the world's order) over the trailing window."""
        result = []
        for history, scrape in zip(self.history, self.metrics.scrape(now), strict=True):
            history.append(scrape)
            times = [s.time for s in history]
            first = max(bisect.bisect_right(times, now - self.window_s + 1e-9) - 1, 0)
            start = history[first]
            earlier = bisect.bisect_right(times, 2 * start.time - now + 1e-9) - 1  # as long again before it
            before = history[earlier] if earlier >= 0 else None
            recent = None
            if self.recent_s is not None:
                recent = history[max(bisect.bisect_right(times, now - self.recent_s + 1e-9) - 1, 0)]
            result.append(observe(_figures(scrape, start, before, recent, history[first:])))
            del history[: max(earlier, 0)]  # nothing older is reached again
        return result


def _figures(
    now: Scrape, start: Scrape, before: Scrape | None, recent: Scrape | None = None, within: list[Scrape] | None = None
) -> WindowFigures:
    """The window's figures between scrapes; `within`: the scrapes from `start` to `now`, whose
    intervals' arrivals (completions plus growth, as the window's) give their Allan factor."""
    finished = now.completed - start.completed
    dispersion, pairs, seconds = allan_factor(*_arrivals(within or []))

    def mean_length(total: int) -> float | None:  # a length histogram's sum over its count
        return total / finished if finished else None

    return WindowFigures(
        window_s=now.time - start.time,
        completed=finished,
        growth=now.in_system - start.in_system,
        completed_before=None if before is None else start.completed - before.completed,
        growth_before=0.0 if before is None else start.in_system - before.in_system,
        running=now.running,
        waiting=now.waiting,
        prompt_tokens=now.prompt_tokens - start.prompt_tokens,
        prompt_len=mean_length(now.prompt_len_sum - start.prompt_len_sum),
        output_len=mean_length(now.output_len_sum - start.output_len_sum),
        ttft_sum=now.ttft_sum - start.ttft_sum,
        itl_sum=now.itl_sum - start.itl_sum,
        itl_count=now.itl_count - start.itl_count,
        ttft_buckets=_increase(now.ttft_counts, start.ttft_counts, TTFT_BOUNDS),
        tpot_buckets=_increase(now.tpot_counts, start.tpot_counts, TPOT_BOUNDS),
        recent_s=None if recent is None else now.time - recent.time,
        completed_recent=None if recent is None else now.completed - recent.completed,
        growth_recent=0.0 if recent is None else now.in_system - recent.in_system,
        dispersion=dispersion,
        dispersion_pairs=pairs,
        dispersion_s=seconds,
    )


def _arrivals(scrapes: list[Scrape]) -> tuple[list[float], list[float]]:
    """Arrivals and seconds between successive scrapes (completions plus growth in the system)."""
    pairs = list(itertools.pairwise(scrapes))
    counts = [float(b.completed - a.completed + b.in_system - a.in_system) for a, b in pairs]
    return counts, [b.time - a.time for a, b in pairs]
