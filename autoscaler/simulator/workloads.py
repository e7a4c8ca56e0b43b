"""The workload suite of the Pareto comparison: traffic shapes beyond the built-in scenarios.

Pure and seeded. Every ISVC of the embedded world gets the same shape at its own base rate
(each shape peaks at 1 like the scenarios', so the busiest minute fits the cluster) and request
sizes from its Azure trace:

- flash-crowd: a quarter of the peak, rising to the peak within 60 s a third into the run,
  held 10 minutes, back down within 60 s (x4);
- slow-ramp: 0.1 -> 1 of the peak over the whole run (0.2x -> 2x of a base rate);
- square-5m, square-2.5m: the peak and a quarter of it, alternating every 5 or 2.5 minutes;
- mmpp: a two-state Markov-modulated Poisson process, levels a quarter and all of the peak
  (0.5x / 2x of the mean of the two), exponential sojourns of 3 minutes on average, each ISVC
  its own chain;
- azure-code, azure-conv: the trace's own arrivals and sizes, one window of it (the trace read
  as a loop, the seed picks where the window starts), time-compressed 4x, thinned where the
  compressed rate is above half the ISVC's base rate. The run is as long as the window: about
  14 minutes for the whole trace. The ISVCs were running before it: the loop's PAST_S before
  the window is the scenario's past, what the policies' openings read.

The built-in scenarios (mixed, steady, diurnal, step, bursty) are workloads too.
"""

from __future__ import annotations

import numpy as np

from .scenarios import DEFAULT_DURATION_S, ISVCS, SCENARIOS, build_scenario, default_world
from .traffic import Requests, Trace, builtin_trace, looped, poisson_arrivals, replayed, sized
from .world import Scenario

SHAPES = ("flash-crowd", "slow-ramp", "square-5m", "square-2.5m", "mmpp")
TRACES = {"azure-code": "code", "azure-conv": "conv"}
WORKLOADS = SHAPES + tuple(TRACES) + SCENARIOS
SUITE = SHAPES + tuple(TRACES) + ("mixed",)  # what `evaluate` runs by default

LOW = 0.25  # the quiet level of the bursty shapes, as a share of the peak
FLASH_RISE_S = 60.0
FLASH_HOLD_S = 600.0
MMPP_SOJOURN_S = 180.0
TRACE_COMPRESSION = 4.0
TRACE_MEAN_SHARE = 0.5  # a replayed trace is thinned to at most this share of an ISVC's base rate
PAST_S = 600.0  # how much of a trace's loop before the window the scenario carries (run time)


def workload_shape(kind: str, seconds: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplier of an ISVC's base rate for every second of the run; the peak is 1."""
    if kind == "flash-crowd":
        start = duration / 3
        rise = np.clip((seconds - start) / FLASH_RISE_S, 0.0, 1.0)
        fall = np.clip((seconds - start - FLASH_RISE_S - FLASH_HOLD_S) / FLASH_RISE_S, 0.0, 1.0)
        return LOW + (1 - LOW) * (rise - fall)
    if kind == "slow-ramp":
        return 0.1 + 0.9 * seconds / max(duration, 1.0)
    if kind.startswith("square-"):
        half_period = float(kind.removeprefix("square-").removesuffix("m")) * 60.0
        return np.where((seconds // half_period) % 2 == 0, 1.0, LOW)
    if kind == "mmpp":
        shape = np.empty_like(seconds)
        level, t = rng.integers(0, 2), 0
        while t < seconds.size:
            stay = max(int(round(rng.exponential(MMPP_SOJOURN_S))), 1)
            shape[t : t + stay] = 1.0 if level else LOW
            level, t = 1 - level, t + stay
        return shape
    raise ValueError(kind)


def _trace_window(trace: Trace, duration_s: float, rng: np.random.Generator) -> tuple[Trace, Trace, float]:
    """One window of the trace, compressed in time, the loop's PAST_S before it (times below 0)
    and the run's length.

    The trace is read as a loop, its first request one mean gap after its last, and the seed picks
    where the window starts, so that seeds replay different stretches of it even when the run is as
    long as the whole trace: started at the trace's first request, every seed opened on the same
    minute (azure-conv's first 40 s carry half the rate of any 40 s after them).
    """
    count = len(trace.time)
    period = float(trace.time[-1]) * count / max(count - 1, 1)
    window = min(duration_s * TRACE_COMPRESSION, period)
    loop = looped(trace, -rng.uniform(0.0, period), period)
    kept = int(np.searchsorted(loop.time, window))  # those before the window's end
    # the window's past is the loop's end, read back from its start
    first = int(np.searchsorted(loop.time, period - min(PAST_S * TRACE_COMPRESSION, period)))
    past = Trace(loop.time[first:] - period, loop.in_tokens[first:], loop.out_tokens[first:])
    return Trace(loop.time[:kept], loop.in_tokens[:kept], loop.out_tokens[:kept]), past, window / TRACE_COMPRESSION


def build_workload(name: str, seed: int = 1, duration_s: float = DEFAULT_DURATION_S, cold_start_s: float = 60.0) -> Scenario:
    if name in SCENARIOS:
        return build_scenario(name, seed, duration_s, cold_start_s)
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r} (one of {', '.join(WORKLOADS)})")
    rng = np.random.default_rng(seed)
    traces = {source: builtin_trace(source) for source in ("code", "conv")}
    world = default_world(cold_start_s)
    if name in TRACES:
        window, past, duration_s = _trace_window(traces[TRACES[name]], duration_s, rng)
        compressed_rate = len(window.time) / duration_s
        shares = [min(1.0, TRACE_MEAN_SHARE * rate / compressed_rate) for *_, rate in ISVCS]
        parts = [_thinned(replayed(window, i, duration_s, speed=TRACE_COMPRESSION), share, rng) for i, share in enumerate(shares)]
        # the past thinned by a stream of its own: the window's requests are the seed's as before
        before = np.random.default_rng((seed, 1))
        # cut at 0: all of it, the past's times are below it
        earlier = [_thinned(replayed(past, i, 0.0, speed=TRACE_COMPRESSION), share, before) for i, share in enumerate(shares)]
        return Scenario(name, world, Requests.merge(parts), duration_s, Requests.merge(earlier), PAST_S)
    seconds = np.arange(int(np.ceil(duration_s)), dtype=float)
    parts = []
    for index, (_, _, _, source, rate) in enumerate(ISVCS):
        times = poisson_arrivals(rate * workload_shape(name, seconds, duration_s, rng), rng)
        parts.append(sized(times[times < duration_s], index, traces[source], rng))
    return Scenario(name, world, Requests.merge(parts), duration_s)


def _thinned(requests: Requests, share: float, rng: np.random.Generator) -> Requests:
    return requests.where(rng.random(len(requests)) < share)
