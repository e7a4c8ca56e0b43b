"""What the planner sees of one ISVC's live load. Pure.

The collector asks Prometheus for vLLM's metrics over a trailing window, the simulator reads
the same metrics off its own replicas (simulator/observe.py); both hand the window's figures to
`observe`, so the planner gets one kind of Observation whichever body runs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from ..limits import finite_problem

Key = tuple[str, str]  # namespace, ISVC name
WINDOW_S = 60  # the trailing window rates are measured over, unless configured otherwise
Buckets = tuple[tuple[float, float], ...]  # (upper bound s, cumulative count), +Inf last


@dataclass(frozen=True)
class Observation:
    arrival_rate: float  # requests/second over the window
    previous_rate: float  # requests/second over the window before (this window's where not measured)
    avg_in_tokens: float | None  # None: nothing completed in the window
    avg_out_tokens: float | None
    running: float
    waiting: float
    ttft_ms: float | None  # observed means, None without completions
    itl_ms: float | None  # the mean gap between a request's outputs (a decode step, as its requests see it)
    ttft_buckets: Buckets  # over the window, one count per first token
    # vLLM's per-request TPOT histogram (vllm:request_time_per_output_token_seconds: each
    # finished request's decode time over its outputs after the first, 0 with one output): the
    # share of requests within the ITL SLO, as the SLO counts them. vLLM's ITL histogram counts
    # every gap alone, and a gap that holds a prefill chunk is long where its request's mean
    # is not: its buckets are not that share. () where not exported (vLLM < 0.11)
    tpot_buckets: Buckets
    window_s: float = WINDOW_S  # what the rates were measured over (and how far apart the two are)
    ready_replicas: int | None = None  # serving the window, where the collector knows it
    # the serving revision's pods bound to a node (holding their GPUs) and those no node has
    # taken yet (waiting for a GPU, no scheduling gate of ours), as the API server shows them;
    # None where not known or a revision is in flight (planner._unbound_released)
    bound_pods: int | None = None
    unbound_pods: int | None = None
    # a replica's KV cache in tokens (vllm:cache_config_info's num_gpu_blocks x block_size),
    # where the collector knows it
    kv_cache_tokens: float | None = None
    # the gaps the mean ITL is over (vllm:inter_token_latency_seconds_count): decode outputs
    itl_gaps: float = 0.0
    # requests/second over the last `recent_s` of the window (the control period), None where
    # not measured: a step shows in it in full within a period, a ramp as a rate still rising
    recent_rate: float | None = None
    recent_s: float | None = None
    # prompt tokens prefilled per second (vllm:prompt_tokens_total): the engine's prefill work,
    # not the request shape; None where not measured
    prompt_tokens_per_s: float | None = None
    # the arrivals' burstiness within the window: the Allan factor of the arrival counts over
    # successive short intervals of `dispersion_s` (allan_factor; 1 for Poisson arrivals), and
    # how many pairs of intervals it is the mean of (its noise); None / 0 where not measured:
    # taken as Poisson
    arrival_dispersion: float | None = None
    dispersion_pairs: int = 0
    dispersion_s: float = 0.0
    previous_measured: bool = True  # False: the window before had no data (a new ISVC)

    def problem(self) -> str | None:
        """Why no decision may be made from this observation (a figure not finite, negative or
        out of range), or None. The collector checks each sample; this checks what it built."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue  # a flag, not a figure
            if f.name.endswith("buckets"):
                problem = next((_bucket_problem(b, c) for b, c in value if _bucket_problem(b, c)), None)
            else:
                optional = f.name.startswith(("avg_", "ttft", "itl")) or f.name in _UNKNOWN_ALLOWED
                problem = None if value is None and optional else finite_problem(value)
            if problem:
                return f"{f.name}: {problem}"
        return None


# None: not known, no fault
_UNKNOWN_ALLOWED = (
    "ready_replicas",
    "bound_pods",
    "unbound_pods",
    "kv_cache_tokens",
    "recent_rate",
    "recent_s",
    "prompt_tokens_per_s",
    "arrival_dispersion",
)


def _bucket_problem(bound: float, count: float) -> str | None:
    return (None if bound == math.inf else finite_problem(bound)) or finite_problem(count)


@dataclass(frozen=True)
class WindowFigures:
    """One ISVC's vLLM figures over a trailing window (and the window before it), as Prometheus
    computes them: increases of the counters, the change of running + waiting, the gauges now.

    The request shape is the finished requests' (vllm:request_prompt_tokens and
    vllm:request_generation_tokens, observed per request when it finishes, with
    request_success_total: each histogram's sum over its count), not the token counters over
    the completions: vLLM counts prompt tokens at prefill, so while a queue builds after a rise
    the window's prefills outnumber its completions and the counter over them overstated the
    mean prompt by about a tenth (chat-8b on square-2.5m), and the capacity sized with it."""

    window_s: float
    completed: float  # vllm:request_success_total
    growth: float  # change of vllm:num_requests_running + vllm:num_requests_waiting
    completed_before: float | None  # None: no data for the window before (not "no requests")
    growth_before: float
    running: float
    waiting: float
    prompt_tokens: float  # vllm:prompt_tokens_total: prompts prefilled in the window
    prompt_len: float | None  # mean prompt of the requests finished in the window; None: none finished
    output_len: float | None  # their mean output
    ttft_sum: float | None  # None: the histogram's sum has no data
    itl_sum: float | None  # vllm:inter_token_latency_seconds (every gap between outputs): its sum
    itl_count: float | None  # and its count
    ttft_buckets: Buckets
    tpot_buckets: Buckets  # vllm:request_time_per_output_token_seconds (Observation.tpot_buckets)
    kv_cache_tokens: float | None = None  # a replica's (vllm:cache_config_info), None: not exported
    # the same two figures over the window's last `recent_s` (None: not measured)
    recent_s: float | None = None
    completed_recent: float | None = None
    growth_recent: float = 0.0
    # the Allan factor of the arrivals over short intervals within the window, its pairs and
    # the intervals' mean length (allan_factor; None: not measured)
    dispersion: float | None = None
    dispersion_pairs: int = 0
    dispersion_s: float = 0.0


def arrival_rate(finished: float, growth: float, seconds: float) -> float:
    """Requests/second that arrived over a window: those that finished in it plus the growth of
    those in the system (running + waiting). Completions alone under-count arrivals while a queue
    builds and over-count while it drains. Below zero (a counter reset within the window) is 0."""
    if seconds <= 0:
        raise ValueError("a window must have a positive length")
    return max(finished + growth, 0.0) / seconds


def observe(figures: WindowFigures) -> Observation:
    """The Observation of one window's figures. Arrivals are completions plus the growth of
    requests in the system (completions alone lag a building queue); with no data for the
    window before, the previous rate is taken as this one: a missing series is no rise from zero."""
    f = figures
    now = arrival_rate(f.completed, f.growth, f.window_s)
    before = now if f.completed_before is None else arrival_rate(f.completed_before, f.growth_before, f.window_s)
    measured = f.recent_s is not None and f.completed_recent is not None and 0 < f.recent_s < f.window_s
    recent = arrival_rate(f.completed_recent, f.growth_recent, f.recent_s) if measured else None
    ttft = mean(f.ttft_sum, histogram_count(f.ttft_buckets))
    itl = mean(f.itl_sum, f.itl_count)
    return Observation(
        arrival_rate=now,
        previous_rate=before,
        avg_in_tokens=f.prompt_len,
        avg_out_tokens=f.output_len,
        running=f.running,
        waiting=f.waiting,
        ttft_ms=None if ttft is None else ttft * 1000.0,
        itl_ms=None if itl is None else itl * 1000.0,
        ttft_buckets=f.ttft_buckets,
        tpot_buckets=f.tpot_buckets,
        window_s=f.window_s,
        kv_cache_tokens=f.kv_cache_tokens,
        itl_gaps=f.itl_count or 0.0,
        recent_rate=recent,
        recent_s=None if recent is None else f.recent_s,
        prompt_tokens_per_s=f.prompt_tokens / f.window_s,
        arrival_dispersion=f.dispersion,
        dispersion_pairs=f.dispersion_pairs if f.dispersion is not None else 0,
        dispersion_s=f.dispersion_s if f.dispersion is not None else 0.0,
        previous_measured=f.completed_before is not None,
    )


def allan_factor(counts: Sequence[float], seconds: Sequence[float]) -> tuple[float | None, int, float]:
    """The arrivals' index of dispersion from their counts over successive intervals (of the
    lengths `seconds`), and the number of pairs it averages: the mean of the squared differences
    of neighbouring intervals' rates over what Poisson arrivals at the mean rate would give,
    (n2/t2 - n1/t1)^2 / (r (1/t1 + 1/t2)), r the counts' total over the intervals' (for equal
    intervals the Allan factor, E[(n2 - n1)^2] / (2 E[n])), the largest difference left out:
    one step of the rate within the window (a square wave's edge) is one large difference, a
    ramp moves every difference little, where the variance around the window's mean would read
    both as burstiness; clumps that recur leave many. About 1 for Poisson arrivals (0.7 with 11
    pairs, the largest of them left out), above for clumps. The third figure is the intervals'
    mean length. (None, 0, 0) with fewer than three intervals or no arrivals."""
    n, t = np.asarray(counts, dtype=float), np.asarray(seconds, dtype=float)
    keep = t > 0.0
    n, t = n[keep], t[keep]
    rate = n.sum() / t.sum() if t.size else 0.0
    if n.size < 3 or not rate > 0.0:
        return None, 0, 0.0
    rates = n / t
    poisson = rate * (1.0 / t[1:] + 1.0 / t[:-1])
    terms = np.sort((rates[1:] - rates[:-1]) ** 2 / poisson)[:-1]
    return float(np.mean(terms)), int(terms.size), float(t.mean())


def mean(total: float | None, count: float | None) -> float | None:
    """A histogram's mean over the window: its sum over its count (None: no observations)."""
    return total / count if total is not None and count is not None and count > 0 else None


def histogram_count(buckets: Buckets) -> float:
    """A histogram's observations over the window (its +Inf bucket; 0 with no buckets)."""
    return buckets[-1][1] if buckets else 0.0


def within(buckets: Buckets, limit_s: float) -> tuple[float, float]:
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
