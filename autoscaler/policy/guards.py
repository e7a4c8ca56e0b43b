"""Guards between the optimizer's answer and what a controller applies: one definition for the
simulator's policy and the cluster controller.

The optimizer sizes for the rate it is given; a controller has to decide which rate that is
(a rise planned for the time new replicas take to start, a queue counted as load) and which of
the optimizer's changes are worth a new revision (a cold start each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GuardSettings:
    batch_change_threshold: float = 0.5  # a batch-size change alone must move it by more than this share
    max_trend_factor: float = 2.0  # never plan for more than twice the measured rate
    trend_sigmas: float = 2.0  # a rise smaller than this many Poisson deviations is noise
    backlog_drain_s: float = 60.0  # requests queued beyond the running batches are served within this


def planned_rate(
    rate: float,
    previous_rate: float,
    *,
    window_s: float,
    period_s: float,
    startup_s: float,
    backlog: float,
    settings: GuardSettings,
) -> float:
    """Requests/second to size for, from the rates measured over this window and the one before.

    The two windows are `window_s` apart, so a rise is per `window_s` and a count over one window
    varies by its Poisson deviation; replicas asked for now serve after `startup_s`, and the next
    decision comes `period_s` later."""
    rise = rate - previous_rate
    noise = settings.trend_sigmas * math.sqrt(max(previous_rate, 1e-9) * window_s) / window_s
    if rise > noise:
        # new replicas serve only after they start: plan for where the load will be by then
        lead = (startup_s + period_s) / window_s
        rate = min(rate + rise * lead, rate * settings.max_trend_factor)
    return rate + max(backlog, 0.0) / settings.backlog_drain_s


def wants_new_revision(
    accelerator: str, max_batch: int, current_accelerator: str, current_max_batch: int, settings: GuardSettings
) -> bool:
    """Whether the optimizer's GPU type or batch size differs enough from what runs to roll out."""
    if accelerator != current_accelerator:
        return True
    return abs(max_batch - current_max_batch) > settings.batch_change_threshold * current_max_batch
