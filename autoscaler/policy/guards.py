"""Guards between the optimizer's answer and what a controller applies: one definition for the
simulator's policy and the cluster controller.

The optimizer sizes for the rate it is given; a controller has to decide which rate that is and
which of the optimizer's changes are worth a new revision (a cold start each).

The rate: replicas asked for now serve only after the startup time, and the next decision
comes a period later, so a decision has to carry the load until the horizon
H = startup_s + period_s. It is sized for the goal quantile (z = 1.64 for the 95% attainment
goal) of the mean load over that horizon, from what was measured, with no tuned constant:

1. the forecast (trend): the rate's rise since the last cycle (or, without one within a window,
   between the two windows the collector measures) beyond z Poisson deviations of the
   difference is extrapolated over H at its pace, to at most `max_trend_factor` times the rate;
2. the burstiness: the index of dispersion D of the arrivals (variance over mean of the counts
   in a window), from the rates measured at the cycles within the lookback, at least 1
   (Poisson). The mean rate over H then deviates by sqrt(D * rate / H), and the rate planned
   is the forecast plus z such deviations: steady arrivals get a Poisson margin, variable ones
   more. The quantile goes no higher than the largest rate measured within the lookback (plus
   its own Poisson margin): the dispersion says the load may come back to where it recently
   was, not beyond (a square wave would otherwise be planned for 1.6x its peak at the peak).
   After a large fall the margin stays wide while the earlier peak is within the lookback
   (from 40 to 10 req/s: about 18-21 planned, at a 90 s startup);
3. queued requests count as load, to be worked off within `backlog_drain_s`.

On the way down (ski rental): a replica released and needed again costs a cold start (startup_s
of GPU time before it serves, and misses meanwhile), so a surplus should be released only once
it has lasted about that long. The HPA the controller writes already does: it scales down only
to the highest count of its last 300 s (manifests.SCALE_DOWN_WINDOW_S), longer than the startup
of every cold start evaluated (60-240 s), and on top of it the plan keeps a margin after a
large fall for the lookback (above). The planner adds no hold of its own: measured, holding the forecast for a
startup as well cost 0.9-3.7 GPU-hours more on square waves, MMPP and a flash crowd (cold starts
60 and 120 s) for at most half a point of attainment. With a startup beyond 300 s the HPA's
window would be the shorter, and the ski-rental rule would want it raised (not done).

The lookback is the horizon plus a window at either end (H + 2 window_s): the swings a
decision's replicas must meet are those that fit within a horizon, and seeing one whole takes
the window before it and the window measuring it.

A cycle may also come early (queue_building): when the requests in the system (running +
waiting) grow since the last cycle by more than z Poisson deviations of the arrivals and
completions in between, the replicas finish less than arrives, and the controller and the
simulator run a cycle then rather than at the period (planner.early_cycle).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from statistics import NormalDist


@dataclass(frozen=True)
class GuardSettings:
    batch_change_threshold: float = 0.5  # a batch-size change alone must move it by more than this share
    max_trend_factor: float = 2.0  # never plan for more than twice the measured rate
    backlog_drain_s: float = 60.0  # requests queued beyond the running batches are served within this


@dataclass(frozen=True)
class Sample:
    """One cycle's figures of one ISVC."""

    time: float
    rate: float  # measured, requests/second
    in_system: float  # requests running + waiting


@dataclass
class ArrivalHistory:
    """One ISVC's cycles within the lookback, oldest first: what the trend, the dispersion, its
    ceiling and the queue signal are measured from."""

    samples: deque[Sample] = field(default_factory=deque)

    def record(self, sample: Sample, lookback_s: float) -> None:
        self.samples.append(sample)
        while self.samples[0].time < sample.time - lookback_s:
            self.samples.popleft()


def z_score(goal: float) -> float:
    """The standard normal quantile of the attainment goal: how many deviations to plan above."""
    return NormalDist().inv_cdf(min(max(goal, 0.5), 1.0 - 1e-6))


def lookback_s(window_s: float, period_s: float, startup_s: float) -> float:
    return startup_s + period_s + 2 * window_s


def dispersion(rates: list[float], window_s: float) -> float:
    """The index of dispersion of the counts over `window_s` (variance over mean; 1 for Poisson
    arrivals, and taken as 1 below that or with fewer than three rates to measure it from)."""
    mean = sum(rates) / len(rates) if rates else 0.0
    if len(rates) < 3 or mean <= 0:
        return 1.0
    variance = sum((r - mean) ** 2 for r in rates) / (len(rates) - 1)
    return max(variance * window_s / mean, 1.0)


def forecast_rate(
    rate: float, earlier_rate: float, *, apart_s: float, window_s: float, horizon_s: float, z: float, settings: GuardSettings
) -> float:
    """The rate expected at the horizon: a rise from the rate measured `apart_s` earlier (over a
    window as long) beyond z Poisson deviations of their difference (the windows differ by
    `apart_s` at either end) is extrapolated over `horizon_s` at its pace."""
    apart_s = min(apart_s, window_s)
    rise = rate - earlier_rate
    noise = z * math.sqrt(max(rate + earlier_rate, 1e-9) * apart_s) / window_s
    if rise > noise:
        return min(rate + rise * horizon_s / apart_s, rate * settings.max_trend_factor)
    return rate


def planned_rate(
    rate: float,
    previous_rate: float,
    *,
    window_s: float,
    period_s: float,
    startup_s: float,
    backlog: float,
    in_system: float,
    history: ArrivalHistory,
    now: float,
    goal: float,
    settings: GuardSettings,
) -> float:
    """Requests/second to size for (the rule in the module's docstring), from the rates measured
    over this window and the one before, the earlier cycles in `history` and the queue; records
    this cycle in `history` with the requests in the system (running + waiting)."""
    horizon = startup_s + period_s
    z = z_score(goal)
    last = history.samples[-1] if history.samples else None
    if last is not None and 0 < now - last.time < window_s:  # the last cycle's window: the newest pace
        earlier, apart = last.rate, now - last.time
    else:
        earlier, apart = previous_rate, window_s
    forecast = forecast_rate(rate, earlier, apart_s=apart, window_s=window_s, horizon_s=horizon, z=z, settings=settings)
    since = now - lookback_s(window_s, period_s, startup_s)
    history.record(Sample(now, rate, in_system), now - since)
    rates = [s.rate for s in history.samples]
    quantile = forecast + z * math.sqrt(dispersion(rates, window_s) * forecast / horizon)
    peak = max(max(rates), forecast)
    return min(quantile, peak + z * math.sqrt(peak / horizon)) + max(backlog, 0.0) / settings.backlog_drain_s


def queue_building(history: ArrivalHistory, in_system: float, now: float, goal: float) -> bool:
    """Whether the requests in the system (running + waiting) grew since the last cycle by more
    than z Poisson deviations of the arrivals and completions in between: the replicas finish
    less than arrives, and a cycle should not wait for the period. vLLM admits requests into
    the running batch up to its max_num_seqs, so under a burst the batch swells (and every
    request's ITL with it) long before num_requests_waiting moves: both count. False before
    the first cycle (nothing to compare with)."""
    if not history.samples:
        return False
    last = history.samples[-1]
    moved = max(2.0 * last.rate * (now - last.time), 1.0)
    return in_system - last.in_system > z_score(goal) * math.sqrt(moved)


def wants_new_revision(
    accelerator: str, max_batch: int, current_accelerator: str, current_max_batch: int, settings: GuardSettings
) -> bool:
    """Whether the optimizer's GPU type or batch size differs enough from what runs to roll out."""
    if accelerator != current_accelerator:
        return True
    return abs(max_batch - current_max_batch) > settings.batch_change_threshold * current_max_batch
