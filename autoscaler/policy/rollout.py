"""Whether a new revision (another GPU type or batch size) is worth its cold start, and which GPUs
revisions in flight hold. Pure.

A new revision is not free: its replicas hold GPUs through a cold start before they serve, and
the revision it replaces keeps its GPUs until the new one is Ready. So a change that the
optimizer finds cheaper is made only when what it saves over a horizon exceeds that cost:

    saving = (cost/h of staying, sized for the same load - cost/h of the new allocation) x horizon
    cost   = (cost/h of the new allocation + cost/h of what runs now) x startup

Each allocation is priced at the count the HPA will run it at over the horizon: the one the
top of the rate's noise asks (planner._over_dwell), not the rate now, whose count is a rounding
of one noisy draw.

The horizon is the dwell time (PlannerSettings.spec_change_interval_s): once made, a change
stands at least that long, so that much of the saving is sure to accrue; beyond it the planner
may change again and the load may have moved back, so counting more would be a bet on the load.
With the dwell of 600 s and a startup of 120 s, a move must save more than a fifth of the two
revisions' cost per hour; at a startup of 60 s, a tenth. A change the SLOs need (staying cannot
meet them within the capacity, and the new allocation can) is made whatever it saves. A move
for a saving is not made while the load is below its recent peak (below_recent_peak), while it
still rises (a rise seen within the window), or while the planner keeps replicas of what runs
for a load beyond it (planner._unsettled): the saving is sized at the load now, and a lull's
is a bet that the load stays down for the dwell, a rise's that it stops where it is.

Meanwhile the two revisions must fit side by side: a change is made only where the GPUs the new
revision needs (and the old one's growth, where the decision scales it up too) are free now, else
the new revision waits for GPUs that others, or its own old revision, hold (a batch change on a
full GPU type would never turn Ready, and the serving revision would stay frozen). Once made,
GPUs held by revisions in flight are not offered to the optimizer again (`offered_capacity`):
the controller and the simulator both count them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..optimizer.domain import Allocation, Catalog
from .decisions import ManagedService
from .guards import GuardSettings, rise_beyond_noise, wants_new_revision


@dataclass(frozen=True)
class Verdict:
    roll_out: bool
    reason: str  # why not (or why, where the SLOs need it); "" when it plainly pays


def judge(new: Allocation, stay: Allocation | None, running_cost: float, startup_s: float, horizon_s: float) -> Verdict:
    """Whether to move to `new` rather than `stay` (the current GPU type and batch, sized for the
    same load; None where it cannot be placed), each at the count it would run at over the
    horizon (the module's doc). Costs per hour in the catalog's unit; `running_cost` is what the
    current revision costs per hour as it runs."""
    if stay is None or (stay.best_effort and not new.best_effort):
        return Verdict(True, "the current GPU type and batch cannot meet the SLOs within the capacity")
    saving = (stay.cost - new.cost) * horizon_s
    cost = (new.cost + running_cost) * startup_s
    if saving > cost:
        return Verdict(True, "")
    return Verdict(
        False,
        f"{new.accelerator} batch {new.max_batch} not worth a new revision: on {new.num_replicas} replicas against "
        f"{stay.num_replicas} it saves {saving / 3600:.4g} over {horizon_s:g} s, its cold start costs {cost / 3600:.4g}",
    )


class Holding(NamedTuple):
    gpu_type: str
    gpus: int
    cost: float  # per hour, in the catalog's unit


def holding(catalog: Catalog, model: str, accelerator: str, replicas: int) -> Holding | None:
    """What `replicas` of `model` on `accelerator` hold; None where the catalog no longer knows them."""
    acc, profile = catalog.accelerators.get(accelerator), catalog.profiles.get((model, accelerator))
    if acc is None or profile is None:
        return None
    return Holding(acc.type, replicas * profile.acc_count * acc.multiplicity, replicas * profile.acc_count * acc.cost)


class Room:
    """GPUs per type free now, handed to this cycle's roll-outs in turn."""

    def __init__(self, free: Mapping[str, int]):
        self.free = dict(free)

    def take(self, needs: Mapping[str, int]) -> bool:
        """Keep the GPUs per type a roll-out needs, all of them or none."""
        if any(self.free.get(gpu_type, 0) < count for gpu_type, count in needs.items() if count > 0):
            return False
        for gpu_type, count in needs.items():
            self.free[gpu_type] = self.free.get(gpu_type, 0) - count
        return True


def offered_capacity(capacity: Mapping[str, int], held: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """GPUs per type the optimizer may hand out: `capacity` less what each revision in flight
    holds (a superseded revision still running, per GPU type), never below zero."""
    offered = dict(capacity)
    for holding in held:
        for gpu_type, count in holding.items():
            if gpu_type in offered:
                offered[gpu_type] -= count
    return {gpu_type: max(count, 0) for gpu_type, count in offered.items()}


def gpus_held(catalog: Catalog, placements: Iterable[tuple[str, str, int]]) -> dict[str, int]:
    """GPUs per type that (model, accelerator, replicas) placements hold (those the catalog no
    longer knows hold none)."""
    held: dict[str, int] = {}
    for model, accelerator, replicas in placements:
        if (holds := holding(catalog, model, accelerator, replicas)) is not None:
            held[holds.gpu_type] = held.get(holds.gpu_type, 0) + holds.gpus
    return held


def free_as_decided(catalog: Catalog, capacity: Mapping[str, int], services: Iterable[ManagedService]) -> dict[str, int]:
    """GPUs free now, where the caller cannot tell: the capacity less what the last decisions hold."""
    free = dict(capacity)
    decided = ((s.model, s.last.accelerator, s.last.replicas) for s in services if s.last is not None)
    for gpu_type, count in gpus_held(catalog, decided).items():
        free[gpu_type] = free.get(gpu_type, 0) - count
    return free


def below_recent_peak(rates: Sequence[float], window_s: float, z: float) -> str | None:
    """Why a move that only saves is not to be made now, or None: the rate now (the last of
    `rates`, the ISVC's cycles within the planning lookback) is below the highest of them by
    more than z Poisson deviations of their difference. Its saving is sized at the load now,
    and a change stands for the dwell: the load it came down from may come back within it (a
    lull in bursty traffic), and the revision chosen for the lull then needs more replicas, a
    cold start, or a change back (on the Azure code trace at a 60 s cold start, mistral-7b
    moved from A100 to L40S at 0.2 req/s, a minute before 2-6 req/s came back)."""
    if not rates:
        return None
    now, peak = rates[-1], max(rates)
    if not rise_beyond_noise(peak, now, window_s, window_s, z):
        return None
    return f"the load ({now:.3g} req/s) is below its recent peak ({peak:.3g} req/s): no move for a saving at it"


def judge_roll_outs(
    catalog: Catalog,
    differing: Iterable[ManagedService],
    moved: Mapping[str, Allocation],
    judged: Mapping[str, tuple[Allocation, Allocation | None]],
    room: Room,
    now: float,
    startup_s: float,
    dwell_s: float,
    guards: GuardSettings,
    unsettled: Mapping[str, str] | None = None,
) -> dict[str, Verdict]:
    """The verdict on each ISVC the optimizer would move (to `moved`, rather than stay on what
    it runs) that its spec changes, dwell and the size of the change let roll out. `judged`: per
    ISVC, the move and the stay (None: it cannot stay) as judge() weighs them, priced over the
    dwell (planner._over_dwell). `unsettled`: ISVCs whose load is not where it will stay, with
    why (below its recent peak, risen within the window, or held for a load beyond it:
    planner._unsettled): a move that only saves is not made for them; one the SLOs need still
    is."""
    verdicts = {}
    for service in differing:
        last, alloc = service.last, moved[service.key]
        if not service.spec_changes or now - last.spec_changed_at < dwell_s:
            continue
        if not wants_new_revision(alloc.accelerator, alloc.max_batch, last.accelerator, last.max_batch, guards):
            continue
        new = holding(catalog, service.model, alloc.accelerator, alloc.num_replicas)
        old = holding(catalog, service.model, last.accelerator, last.replicas)
        # until the new revision is Ready the old one serves, scaled as the decision: it grows too
        grown = holding(catalog, service.model, last.accelerator, max(alloc.num_replicas - last.replicas, 0))
        running_cost = old.cost + grown.cost if old and grown else last.cost
        # the horizon is the dwell: the least time a change stands
        verdict = judge(*judged[service.key], running_cost, startup_s, dwell_s)
        if verdict.roll_out and not verdict.reason and unsettled and service.key in unsettled:
            verdict = Verdict(False, unsettled[service.key])
        needs: dict[str, int] = {}
        for held in (new, grown):
            if held is not None:
                needs[held.gpu_type] = needs.get(held.gpu_type, 0) + held.gpus
        if verdict.roll_out and not room.take(needs):
            wanted = ", ".join(f"{count} {gpu_type}" for gpu_type, count in needs.items() if count)
            verdict = Verdict(False, f"no room for a new revision: it needs {wanted} GPUs free now")
        verdicts[service.key] = verdict
    return verdicts
