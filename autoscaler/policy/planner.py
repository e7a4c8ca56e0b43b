"""One control cycle's decisions, from observations to plans. Pure: no I/O, the clock passed in.

Rules on top of the optimizer, each for a failure seen in practice:
- no data for an ISVC (Prometheus down, its series missing) keeps its last decision, marked
  stale: missing data must never read as zero load;
- an ISVC that has never been decided and has no data is sized for zero load (its minimum);
- the optimizer picks the GPU type and batch size; the replica count comes from the vLLM
  latency model (latency.py) at the attainment goal, with its work scale per (model, GPU) and
  its attainment bias per ISVC learned from each window (sizing.py); a model with no profile is
  placed and sized with a conservative prior's (prior.py), its step costs identified online;
  behind a router that balances by load (`load_aware_router`), a fleet that meets its goal is
  one replica fewer where the model's pool of one fewer meets it (_pooled);
- the rate sized for is the goal quantile of the load expected until replicas asked for now
  serve (the rate now, measured burstiness, at most the recent peak), queued requests count as
  load (guards.py); requests building up between cycles ask for a cycle early (early_cycle);
  a controller started beside running ISVCs has their lookback's cycles read back from
  Prometheus before its first plan (recall), not one window;
  while the rate rises beyond noise, no replica the load may need now is released
  (_held); between rises that recur, what holds a GPU is kept while holding it costs less than
  the misses and cold starts it saves, a miss priced dearer while the ISVC's misses exceed what
  its goal allows (guards.retained_rate);
- the GPU type and batch size change only where the ISVC allows spec changes, only when the
  change is large enough (guards.wants_new_revision), not more often than once per
  `spec_change_interval_s` (the dwell: at most 3600 / 600 = 6 changes per ISVC per hour by
  default), only when it saves more over the dwell than the cold start of a new revision beside
  the old one costs, and not for a saving while the load is below its recent peak, still
  rises, or the replicas it runs are held for a load it may come back to (a lull or a load in
  transit: _unsettled), or when the SLOs need it, and only when the GPUs the new revision needs
  are free now (rollout.py, weighing the latency model's replica counts); otherwise the ISVC is
  pinned to what it runs and sized again;
- the latency model's counts are placed within the capacity: where they ask more GPUs of a type
  than it has (the optimizer placed by its own queueing model's counts), the optimizer places
  again with that type's room short by the excess, so the ISVCs it values least move to types
  with room rather than wait for GPUs that never free up (FIT_ROUNDS), unless that leaves an
  ISVC it had placed unplaced (there, or where it runs should the roll-out rules refuse its move);
- pods the HPA's scale-down window keeps beyond the plan that all wait for a GPU are let go at
  once (_unbound_released): they serve nothing and would take the next GPU that frees;
- an ISVC the optimizer cannot place under the capacity keeps its last decision;
- an observation or remembered decision with a value not finite or out of range is the fault of
  its ISVC alone: it is left out (with the reason), and a decision that would carry such a value
  is withheld (the last one kept), so nothing non-finite or out of range is ever decided; should
  the optimizer itself fail on one ISVC's figures, that ISVC alone keeps its last decision.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from . import sizing
from .guards import (
    ArrivalHistory,
    GuardSettings,
    Sample,
    beyond_goal,
    lookback_s,
    meets_goal,
    planned_rate,
    poisson_top,
    queue_building,
    retained_rate,
    rise_beyond_noise,
    z_score,
)
from ..optimizer.domain import (
    Allocation,
    Catalog,
    CurrentAllocation,
    IterationParams,
    Load,
    Server,
    ServiceClass,
    ServiceTarget,
    System,
)
from ..optimizer.solver import solve
from .observation import Key, Observation, histogram_count
from .decisions import LastDecision, ManagedService, material
from .rollout import Room, below_recent_peak, free_as_decided, gpus_held, judge_roll_outs

log = logging.getLogger(__name__)
NOT_SIZED = IterationParams(0.0, 0.0, 0.0)  # the step costs published where the latency model did not size
# placements again with a GPU type's room short by what the latency model's counts ask beyond it
# (plan): each round moves the ISVCs the optimizer values least off the types still over
FIT_ROUNDS = 3


@dataclass(frozen=True)
class PlannerSettings:
    period_s: float = 30.0
    startup_s: float = 120.0  # from a scale-up decision to a serving replica (image, weights, warm-up)
    attainment_goal: float = 0.95
    spec_change_interval_s: float = 600.0
    # a cycle may come early on a queue signal, at most once per HPA sync (15 s, the Kubernetes
    # default): the HPA applies a new desired count only at its next sync, so earlier cycles in
    # between would change nothing but the load on Prometheus and the API server
    early_interval_s: float = 15.0
    # the ISVCs' traffic reaches their replicas through a router that balances by load (Knative's
    # activator, Istio's LEAST_REQUEST, the Gateway API inference extension): a fleet pools its
    # queues (_pooled). False: a router blind to load (kube-proxy's), each replica a Poisson share
    load_aware_router: bool = False
    guards: GuardSettings = GuardSettings()


class Outcome(enum.Enum):
    """What a plan amounts to, as the ISVC's `AutoscalerDecision` condition names it (its reason;
    Plan.reason is the sentence beside it). An operator reads the condition's status: a plan as
    decided is True, whatever its notes say (a move not worth its cold start, pods waiting for a
    GPU let go); one that leaves the SLOs or pods unserved for want of GPUs is False; one made
    without this cycle's load is Unknown."""

    DECIDED = "Decided"
    SCALED_TO_ZERO = "ScaledToZero"  # no load and min-replicas 0, as the ISVC asks
    BEST_EFFORT = "BestEffort"  # no GPU type meets the SLOs within the capacity: the optimizer's best
    CONSTRAINED = "Constrained"  # replicas will wait for a GPU, or the ISVC keeps what it has
    NO_PLACEMENT = "NoPlacement"  # nothing can be decided yet
    STALE = "StaleLoadData"  # no usable load data, or a decision withheld: the last one kept


@dataclass(frozen=True)
class Plan:
    service: ManagedService
    decision: LastDecision | None  # None: nothing can be decided yet (reason says why)
    roll_out: bool = False  # apply a new GPU type / batch size to the spec (a new revision)
    reason: str = ""
    outcome: Outcome = Outcome.DECIDED
    # the HPA's scale-down stabilisation to write, in seconds: None for its default
    # (guards.SCALE_DOWN_WINDOW_S); one collector window while the step costs of the model
    # with no profile it runs are still being identified (_identifying); 0 where every pod the
    # HPA keeps beyond the plan waits for a GPU (_unbound_released)
    scale_down_s: int | None = None

    @property
    def stale(self) -> bool:
        """No usable data this cycle: the last decision, kept."""
        return self.outcome is Outcome.STALE

    @property
    def records_decision(self) -> bool:
        """Whether the ISVC's decision annotation (what the next cycle reads as `last`) is
        rewritten: on a roll-out, or when fresh data changed something material."""
        if self.decision is None:
            return False
        return self.roll_out or (not self.stale and material(self.service.last) != material(self.decision))


@dataclass
class PlannerState:
    """What the planner learns between cycles beyond the cluster: the latency model's work
    scales and attainment biases (sizing.Learned), and each ISVC's recent cycles
    (guards.ArrivalHistory). A restart resumes an ISVC's bias from its stored decision
    (ttft_scale and itl_scale carry it) and relearns the work scales. The rate variation is
    stored with the decision but not resumed from it: the bias is learned a step at a time from
    only some windows, slow to relearn, while the variation is read afresh from every window's
    arrivals (sizing.see_arrivals), so the first cycle has it back, as the median of the windows
    seen since (one at first: an outlier window not yet outvoted); the request shape likewise
    (sizing.see_shape), from one window's requests at first. The arrival history is recalled
    from Prometheus where the controller can read it (recall: the lookback's cycles, the rate
    variation with them); where it cannot, it is lost, degraded but safe: until it fills a
    lookback again the arrivals count as Poisson (no headroom for burstiness, no earlier peak
    held: the HPA's scale-down stabilisation still holds the replicas), the first trend is
    measured between the collector's two windows, no queue signal is seen before the first
    cycle, and no hold between rises that recur is kept until they have recurred again
    (guards.retained_rate), a miss priced at the request alone until misses are seen again."""

    learned: sizing.Learned = field(default_factory=sizing.Learned)
    arrivals: dict[Key, ArrivalHistory] = field(default_factory=dict)
    uids: dict[Key, str] = field(default_factory=dict)  # the ISVC each key's state was learned from

    def keep_only(self, services: list[ManagedService]) -> None:
        """Forget the per-ISVC state of the ISVCs no longer planned (deleted, or refused by the
        service reader) and of those created again under the same name (a new uid): kept, it
        would grow with every ISVC ever seen, and a namesake would start from a bias, a rate
        variation and arrivals that are not its own, as it does not resume from the old one's
        stored decision (decision_store). A refused ISVC fixed later resumes its bias from its
        stored decision, like a restart. What is learned per (model, GPU), the work scales and
        identified step costs, stays."""
        current = {(s.namespace, s.name): s.uid for s in services}
        for key in [k for k, uid in self.uids.items() if current.get(k) != uid]:
            self.arrivals.pop(key, None)
            self.learned.forget(f"{key[0]}/{key[1]}")
        self.uids = current


def early_cycle(state: PlannerState, in_system: Mapping[Key, float], now: float, settings: PlannerSettings) -> list[Key]:
    """The ISVCs whose requests in the system (running + waiting, now) build faster than their
    replicas finish them (guards.queue_building): a cycle now rather than at the period serves
    them. Whether the last cycle is recent enough to wait is the caller's (early_interval_s)."""
    return [
        key
        for key, count in in_system.items()
        if (history := state.arrivals.get(key)) is not None and queue_building(history, count, now, settings.attainment_goal)
    ]


def recall(
    catalog: Catalog,
    services: list[ManagedService],
    observed: Mapping[Key, Observation],
    at: float,
    state: PlannerState,
    settings: PlannerSettings,
) -> None:
    """Records one past cycle of the ISVCs, their load as the collector read it at `at`,
    without deciding: a controller started or failed over beside running ISVCs reads their
    lookback from Prometheus (the collector's queries at past instants, a period apart) before
    its first cycle. Without it the first cycles have one window: the arrivals count as
    Poisson, no earlier peak bounds the quantile and the rate variation is one window's
    (PlannerState). The Azure conversation trace's windows of seeds 5, 13 and 14 open in a dip:
    chat-8b at 15-16 req/s after minutes at 19-28, rising to 17-19 within three minutes; from
    the opening minute alone it opened on one H100 and missed 30-58% of each minute's requests
    until a second served (docs/notes/pareto.md). What a window shows of the arrivals (the rate,
    its variation) and of the requests' SLOs is recalled. Not the request shape: recalled, it
    opened granite-13b and mistral-7b there on one H100 each, short of what their windows then
    needed (seed 5 at 240 s: 94.7% of the requests within the SLOs with 2.05 GPU-hours, against
    96.2% with 2.89; on the code trace mistral-7b met 17%), and the shape follows the windows
    served within a few cycles anyway. No bias or work scale is learned from a past whose
    deployment the planner did not decide, and no rise is judged in it (a cycle's present bound
    is its rate). Cycles in time order, each older than any the ISVC has (a later one is
    ignored); an unusable observation is left out, as plan leaves it."""
    state.keep_only(services)
    for service in services:
        obs = observed.get((service.namespace, service.name))
        history = state.arrivals.setdefault((service.namespace, service.name), ArrivalHistory())
        if obs is None or obs.problem() or (history.samples and history.samples[-1].time >= at):
            continue
        sizing.see_arrivals(state.learned, service.key, obs)
        served, missed = _served(obs, catalog.classes[service.service_class].targets[service.model])
        sample = Sample(at, obs.arrival_rate, obs.running + obs.waiting, obs.arrival_rate, obs.recent_rate, served, missed)
        lookback = lookback_s(obs.window_s, settings.period_s, settings.startup_s)
        history.record(sample, lookback, settings.guards.rise_memory_s)


def _served(obs: Observation, target: ServiceTarget) -> tuple[float, float]:
    """The window's requests that got their first token, and those of them outside the SLOs:
    what a hold saves is priced by them (guards.retained_rate)."""
    served = histogram_count(obs.ttft_buckets)
    return served, served * sizing.measured_miss(obs, target)


def _window(
    state: PlannerState, service: ManagedService, target, obs: Observation, now: float, settings: PlannerSettings
) -> sizing.Window | None:
    """The window the last decision served, where it is one to learn from (each once), with
    the pool its replicas were balanced over and whether the ISVC misses its goal over the
    memory; the ISVC's bias resumed from its last decision where the planner has none."""
    last, learned = service.last, state.learned
    if last is not None and service.key not in learned.bias:
        learned.bias[service.key] = sizing.Estimate(last.ttft_scale)
    if last is None:
        return None
    serving = last.replicas if obs.ready_replicas is None else obs.ready_replicas
    count, since = learned.serving.get(service.key, (serving, now))
    learned.serving[service.key] = (serving, since if count == serving else now)
    # only a window served throughout by one fleet of one GPU type says what a replica does:
    # one that a roll-out may have reached mixes two GPU types, one that a scale-up reached
    # shows a replica overloaded while the others started (lag, not the model's error)
    settled = now - max(last.spec_changed_at + settings.startup_s, learned.serving[service.key][1]) >= obs.window_s
    # each window once: overlapping windows would count the same requests twice
    fresh_window = now - learned.learned_at.get(service.key, -math.inf) >= obs.window_s
    if not (settled and fresh_window):
        return None
    learned.learned_at[service.key] = now
    runs = sizing.Deployment(service.key, service.model, last.accelerator, last.max_batch)
    history = state.arrivals.get((service.namespace, service.name))
    in_system_before = _in_system_at(history, now - obs.window_s, obs.window_s)
    pool = max(serving, 1) if settings.load_aware_router else 1
    missing = history is not None and beyond_goal(history.samples, settings.attainment_goal)
    return sizing.Window(runs, serving, obs, target, in_system_before, pool, missing)


def _in_system_at(history: ArrivalHistory | None, start: float, window_s: float) -> float | None:
    """The requests running + waiting at the cycle of `history` nearest `start` (within a
    quarter window of it: cycles come a period or an early cycle apart), None where none was
    that near."""
    near = [s for s in history.since(start - window_s / 4) if s.time <= start + window_s / 4] if history else []
    return min(near, key=lambda s: abs(s.time - start)).in_system if near else None


def _scales(state: PlannerState, key: str) -> tuple[float, float]:
    """The ISVC's bias as learned so far (as both scales)."""
    bias = state.learned.bias.get(key, sizing.Estimate()).value
    return bias, bias


def _load(
    service: ManagedService,
    obs: Observation,
    catalog: Catalog,
    target: ServiceTarget,
    settings: PlannerSettings,
    history: ArrivalHistory,
    now: float,
    shape: tuple[float, float] | None,
) -> tuple[Load, float]:
    served, missed = _served(obs, target)  # kept with its cycle
    rate = planned_rate(
        obs.arrival_rate,
        obs.previous_rate,
        window_s=obs.window_s,
        period_s=settings.period_s,
        startup_s=settings.startup_s,
        backlog=obs.waiting,
        in_system=obs.running + obs.waiting,
        history=history,
        now=now,
        goal=settings.attainment_goal,
        settings=settings.guards,
        recent_rate=obs.recent_rate,
        recent_s=obs.recent_s,
        previous_measured=obs.previous_measured,
        served=served,
        missed=missed,
    )
    last = service.last
    if shape is not None:  # the ISVC's traffic over its last windows (sizing.sized_shape)
        avg_in, avg_out = round(shape[0]), max(round(shape[1]), 1)
    elif last is not None and last.avg_out_tokens:
        avg_in, avg_out = last.avg_in_tokens, last.avg_out_tokens
    else:  # nothing completed yet: the shape the profiles were measured at
        at_tokens = [p.at_tokens for (m, _), p in catalog.profiles.items() if m == service.model and p.at_tokens]
        avg_in = avg_out = max(at_tokens, default=128)
    return Load(rate * 60.0 if avg_out else 0.0, avg_in, avg_out), obs.arrival_rate


def _server(service: ManagedService, load: Load, pinned: bool) -> Server:
    last = service.last
    current = None if last is None else CurrentAllocation(last.accelerator, last.replicas, last.max_batch, last.cost)
    keep = last is not None and (pinned or not service.spec_changes)
    return Server(
        name=service.key,
        class_name=service.key,
        model=service.model,
        load=load,
        min_replicas=service.min_replicas,
        max_batch_size=last.max_batch if keep else 0,
        keep_accelerator=keep,
        current=current,
        accelerators=service.accelerators,
    )


def _own_class(catalog: Catalog, service: ManagedService) -> ServiceClass:
    """A class of the ISVC's own (rows shared by equal targets), its class's priority."""
    cls = catalog.classes[service.service_class]
    return ServiceClass(service.key, cls.priority, {service.model: cls.targets[service.model]})


def plan(
    catalog: Catalog,
    capacity: Mapping[str, int],
    services: list[ManagedService],
    observed: Mapping[Key, Observation],
    now: float,
    state: PlannerState,
    settings: PlannerSettings = PlannerSettings(),
    free: Mapping[str, int] | None = None,
) -> list[Plan]:
    """Plans for `services`. `capacity`: the GPUs per type the optimizer may hand out (managed
    ISVCs are placed afresh; GPUs held by revisions in flight are already out, rollout.py);
    `free`: GPUs per type no pod holds now, which a new revision must start on (None: the
    capacity less what the last decisions hold)."""
    loads: dict[str, tuple[Load, float]] = {}
    windows: list[sizing.Window] = []
    state.keep_only(services)
    services = [_believed(s) for s in services]
    refused: dict[str, str] = {}
    for service in services:
        obs = observed.get((service.namespace, service.name))
        if obs is not None and (problem := obs.problem()):
            refused[service.key], obs = f"unusable observation ({problem})", None
        if obs is None and service.last is None:
            obs = Observation(0.0, 0.0, None, None, 0.0, 0.0, None, None, (), ())
        if obs is not None:
            target = catalog.classes[service.service_class].targets[service.model]
            if (window := _window(state, service, target, obs, now, settings)) is not None:
                windows.append(window)
            sizing.see_arrivals(state.learned, service.key, obs)
            sizing.see_shape(state.learned, service.key, obs)
            history = state.arrivals.setdefault((service.namespace, service.name), ArrivalHistory())
            shape = sizing.sized_shape(state.learned, service.key)
            loads[service.key] = _load(service, obs, catalog, target, settings, history, now, shape)
    # every window at once: the latency model's predictions for them are one vectorised batch
    sizing.learn_windows(state.learned, catalog, windows, settings.attainment_goal)
    fresh = {key: (load, measured, _scales(state, key)) for key, (load, measured) in loads.items()}
    # models with no profile are placed by their prior's, as identified so far (the windows above)
    catalog = sizing.with_priors(catalog, state.learned, [(s.model, s.accelerators) for s in services])

    def solve_among(among: list[ManagedService], pinned: set[str], room: Mapping[str, int]) -> Mapping[str, Allocation]:
        classes = {s.key: _own_class(catalog, s) for s in among}
        servers = tuple(_server(s, fresh[s.key][0], s.key in pinned) for s in among)
        system = System(catalog.accelerators, room, catalog.profiles, classes, servers, catalog.optimizer)
        return solve(system).allocations

    def solve_for(pinned: set[str], room: Mapping[str, int]) -> Mapping[str, Allocation]:
        """The joint solve. Should the optimizer fail on it (a bug meeting one ISVC's figures),
        each ISVC is tried alone and those it fails on are left out, their last decision kept:
        one ISVC never stops the others' decisions."""
        try:
            return solve_among([s for s in services if s.key in fresh], pinned, room)
        except Exception as exc:  # isolated below, reported with the ISVC
            joint = f"{exc.__class__.__name__}: {exc}"
        for service in [s for s in services if s.key in fresh]:
            try:
                solve_among([service], pinned, room)
            except Exception as exc:  # this ISVC's figures: it keeps its last decision
                refused[service.key] = f"the optimizer failed on its figures ({exc.__class__.__name__}: {exc})"
                del fresh[service.key]
                log.error("%s: %s", service.key, refused[service.key])
        try:
            return solve_among([s for s in services if s.key in fresh], pinned, room)
        except Exception:  # only together do they fail: none decided this cycle
            for key in list(fresh):
                refused[key] = f"the optimizer failed on this cycle's figures ({joint})"
                del fresh[key]
            log.error("the optimizer failed on this cycle's figures (%s): every ISVC keeps its last decision", joint)
            return {}

    by_key = {s.key: s for s in services}

    def by_model(among: Mapping[str, Allocation], moves: set[str]) -> dict[str, _SizedAllocation]:
        """Each allocation sized for the batch it would run with: its own where it moves the ISVC
        (or the ISVC runs nothing yet), else the batch the ISVC runs now."""
        keys = [k for k in among if k in fresh]
        batch = [among[k].max_batch if k in moves or by_key[k].last is None else by_key[k].last.max_batch for k in keys]
        asked = [_Asked(by_key[k], among[k], b, fresh[k][0]) for k, b in zip(keys, batch, strict=True)]
        return dict(zip(keys, _sized(state, catalog, asked, settings), strict=True))

    def placed(
        room: Mapping[str, int],
    ) -> tuple[list[ManagedService], dict[str, _SizedAllocation], dict[str, _SizedAllocation], dict[str, int]]:
        """The optimizer's placement within `room`, and those it would move sized again on what
        they run (the choice between the two), each with the latency model's replica counts,
        before the roll-out rules weigh and place them; and the GPUs per type the optimizer's
        own counts hold."""
        allocations = solve_for(set(), room)
        differing = [
            s
            for s in services
            if s.key in fresh
            and s.last is not None
            and (alloc := allocations.get(s.key)) is not None
            and (alloc.accelerator, alloc.max_batch) != (s.last.accelerator, s.last.max_batch)
        ]
        staying = solve_for({s.key for s in differing}, room) if differing else {}
        moves = {s.key for s in differing}
        return differing, by_model(allocations, moves), by_model(staying, set()), _gpus(catalog, by_key, allocations)

    differing, sized, staying_sized, optimizer = placed(capacity)
    # the optimizer places by its own queueing model's counts; where the latency model's exceed a
    # GPU type's capacity, the ISVCs the optimizer values least would wait for GPUs that never
    # free up while other types have room: it places again with each such type's room short by
    # what the latency model asks there beyond the optimizer (its priorities decide who moves),
    # unless that leaves an ISVC it placed unplaced, there or where it runs (a move the roll-out
    # rules refuse)
    placeable = dict(capacity)
    for _ in range(FIT_ROUNDS):
        asked = _gpus(catalog, by_key, {k: v[0] for k, v in sized.items()})
        if all(count <= capacity.get(gpu_type, 0) for gpu_type, count in asked.items()):
            break
        placeable = {
            gpu_type: max(min(left, capacity[gpu_type] - asked.get(gpu_type, 0) + optimizer.get(gpu_type, 0)), 0)
            for gpu_type, left in placeable.items()
        }
        again = placed(placeable)
        moved, moved_sized, moved_staying, _ = again
        if not set(sized) <= set(moved_sized) or not {s.key for s in moved} <= set(moved_staying):
            break  # an ISVC placed before, or where it runs should its move be refused, would be left out
        differing, sized, staying_sized, optimizer = again
    moving = {s.key for s in differing}
    allocations = {k: v[0] for k, v in sized.items()}
    staying = {k: v[0] for k, v in staying_sized.items()}
    room = Room(free if free is not None else free_as_decided(catalog, capacity, services))
    dwell_s = settings.spec_change_interval_s
    # a move for a saving is sized at the load now: not made in a lull (_unsettled)
    z = z_score(settings.attainment_goal)

    def kept(service: ManagedService, alloc: Allocation, per_replica: float) -> Allocation:
        obs = observed.get((service.namespace, service.name))
        scale_down_s = _identifying(state, service, alloc.accelerator, obs, z)
        return _held(state, service, alloc, per_replica, obs, now, settings, scale_down_s, z)

    # what each ISVC the optimizer would move keeps where it stays: the roll-out rules weigh it
    # (_unsettled), and where the move is refused it is what the ISVC runs
    held_staying = {s.key: kept(s, *staying_sized[s.key][:2]) for s in differing if s.key in staying_sized}
    unsettled = {
        s.key: why
        for s in differing
        if (why := _unsettled(state, s, staying.get(s.key), held_staying.get(s.key), observed.get((s.namespace, s.name)), z))
    }

    def over_dwell(service: ManagedService, sized_alloc: _SizedAllocation) -> Allocation:
        rate = fresh[service.key][0].arrival_rate_rpm / 60.0
        return _over_dwell(service, *sized_alloc[:2], rate, observed.get((service.namespace, service.name)), z)

    # what a move is judged by: each side as the HPA will run it over the dwell
    judged = {
        s.key: (over_dwell(s, sized[s.key]), over_dwell(s, staying_sized[s.key]) if s.key in staying_sized else None)
        for s in differing
    }
    verdicts = judge_roll_outs(
        catalog, differing, allocations, judged, room, now, settings.startup_s, dwell_s, settings.guards, unsettled
    )
    roll_outs = {key for key, verdict in verdicts.items() if verdict.roll_out}
    pinned = moving - roll_outs
    sized = {k: v for k, v in sized.items() if k not in pinned} | {k: staying_sized[k] for k in pinned if k in staying_sized}

    plans = []
    for service in services:
        if service.key not in fresh:
            reason = refused.get(service.key, "no load data this cycle")
            plans.append(Plan(service, service.last, reason=f"{reason}: last decision kept", outcome=Outcome.STALE))
            continue
        load, measured, scales = fresh[service.key]
        if service.key not in sized:
            plans.append(_unplaced(service, load, measured, now, scales))
            continue
        alloc, per_replica, work, costs = sized[service.key]
        rolled = service.key in roll_outs
        obs = observed.get((service.namespace, service.name))
        scale_down_s = _identifying(state, service, alloc.accelerator, obs, z)
        if not rolled:
            if service.key in pinned:
                alloc = held_staying[service.key]  # its move refused: as weighed (_unsettled)
            else:
                alloc = _held(state, service, alloc, per_replica, obs, now, settings, scale_down_s, z)
        last = service.last
        decision = LastDecision(
            accelerator=alloc.accelerator,
            replicas=alloc.num_replicas,
            max_batch=alloc.max_batch,
            ttft_ms=alloc.ttft_ms,
            itl_ms=alloc.itl_ms,
            arrival_rate=measured,
            cost=alloc.cost,
            decided_at=now,
            avg_in_tokens=load.avg_in_tokens,
            avg_out_tokens=load.avg_out_tokens,
            ttft_scale=scales[0],
            itl_scale=scales[1],
            spec_changed_at=now if rolled else (last.spec_changed_at if last else now),
            replica_capacity=per_replica,
            work_scale=work,
            # what the sizing above read (see_arrivals is done with this cycle before it)
            rate_variation=sizing.sized_variation(state.learned, service.key) if per_replica else 0.0,
            step_ms=costs.alpha,
            token_ms=costs.beta,
            kv_token_ms=costs.gamma,
        )
        if problem := decision.problem():
            withheld = f"decision withheld ({problem}): last decision kept"
            plans.append(Plan(service, last, reason=withheld, outcome=Outcome.STALE))
            continue
        reasons = ["best effort: SLOs not met within capacity"] if alloc.best_effort else []
        if (verdict := verdicts.get(service.key)) is not None and verdict.reason:
            reasons.append(verdict.reason)
        if not rolled and (released := _unbound_released(obs, decision.replicas)):
            scale_down_s = 0
            reasons.append(released)
        outcome = Outcome.BEST_EFFORT if alloc.best_effort else Outcome.DECIDED
        reason = "; ".join(reasons)
        plans.append(Plan(service, decision, roll_out=rolled, reason=reason, outcome=outcome, scale_down_s=scale_down_s))
    return _beyond_capacity(catalog, capacity, plans)


def _beyond_capacity(catalog: Catalog, capacity: Mapping[str, int], plans: list[Plan]) -> list[Plan]:
    """The plans, each of those decided afresh on a GPU type that the decisions together ask
    more of than the capacity saying so in its reason: some of their pods will wait for a GPU
    (Pending). That is left where the optimizer could only do its best, where the dwell keeps an
    ISVC on a full type, or where the capacity fit could not move an ISVC off it (a type with
    room too small for its latency model's count: the fit's round is taken all the same, as it
    leaves the excess with the ISVCs the optimizer values least)."""
    decided = [p for p in plans if p.decision is not None]
    asked = gpus_held(catalog, ((p.service.model, p.decision.accelerator, p.decision.replicas) for p in decided))
    beyond = {gpu_type: count for gpu_type, count in asked.items() if count > capacity.get(gpu_type, 0)}
    if not beyond:
        return plans
    noted = []
    for p in plans:
        acc = catalog.accelerators.get(p.decision.accelerator) if p.decision is not None else None
        if acc is not None and not p.stale and (gpu_type := acc.type) in beyond:  # "2xA100" holds A100s
            offered = capacity.get(gpu_type, 0)
            note = f"the plans ask {beyond[gpu_type]} {gpu_type} GPUs of the {offered} offered: replicas will wait for one"
            p = replace(p, reason="; ".join(filter(None, (p.reason, note))), outcome=Outcome.CONSTRAINED)
        noted.append(p)
    return noted


def _over_dwell(
    service: ManagedService, alloc: Allocation, per_replica: float, rate: float, obs: Observation | None, z: float
) -> Allocation:
    """`alloc` as the HPA runs it over the dwell, the cost a move is judged by (rollout.judge):
    at the count the top of the rate's Poisson noise over the collector's window asks (z
    deviations), within the ISVC's bounds. The HPA keeps the most its scale-down window's
    recommendations asked, and each cycle's rate is a new draw of that noise, so a revision runs
    at about the count of the window's highest draw, not the one the rate now asks. Counted at
    the rate now, a move's saving is a rounding of one draw where the rate sits just under one
    GPU type's next replica and not under the other's: mistral-7b in seed 1's flash crowd (60 s)
    moved from one H100 to one A100 at 1.9 req/s (2.14 a replica) and asked a second a minute
    later, and the crowd took the A100s to six: 2.54 GPU-hours for 95.4% of its requests, where
    the H100s it now stays on spend 1.70 for 95.1% (dearer in dollars all the same, the A100 the
    cheaper per request: docs/notes/planning.md). Unchanged where the latency model did not size
    it (the optimizer's count stands)."""
    if per_replica <= 0.0 or alloc.num_replicas <= 0 or obs is None:
        return alloc
    top = poisson_top(rate, obs.window_s, z)
    return _on(alloc, service.bounded(sizing.replicas_for(top, per_replica)))


def _on(alloc: Allocation, replicas: int) -> Allocation:
    """`alloc` on `replicas` replicas, its cost per hour scaled to match."""
    return replace(alloc, num_replicas=replicas, cost=alloc.cost * replicas / max(alloc.num_replicas, 1))


def _unsettled(
    state: PlannerState,
    service: ManagedService,
    staying: Allocation | None,
    held: Allocation | None,
    obs: Observation | None,
    z: float,
) -> str | None:
    """Why a move that only saves is not to be made now, or None: the load is below its recent
    peak (rollout.below_recent_peak), has risen beyond noise at a cycle within the collector's
    window (its present bound above its rate, guards.present_bound: the window's mean lags such
    a rise for a whole window, ArrivalHistory.rise_within), or the planner keeps replicas of
    what runs for a load beyond the load now (_held: a rise in progress, rises that recur, a lull
    held as ski rental). The move's saving is sized at the load now, and a change stands for
    the dwell. Below a peak, the load those replicas are kept for may come back within it; a
    move drops the hold (_held keeps only what runs), so the new revision would meet it with
    the lull's count: mistral-7b on the bursty workload (seed 1, 60 s), held on H100s for its
    first spike's 7.7 req/s, moved to one A100 sized for 1.9 req/s six minutes into the lull,
    and the next spike queued behind it. In a rise, the load now is one the rise passes through:
    the same ISVC, 15 s into its second spike (4.5 req/s, on its way to 8.3), moved from two
    H100s to four A100s that the spike's peak took to six, and the lulls after it held four to
    five A100s for the spikes to come: 4.1 GPU-hours for 94.4% of its requests, where the H100s
    it stays on meet 94.2% with 2.9 (dearer there in dollars, $11.6 against $10.8: a bet on a
    load in transit can win too; over the cases measured the rule is about even in dollars and
    spends fewer GPU-hours and revisions, docs/notes/planning.md). Within the window, not only
    at the cycle that saw the rise: granite-13b in seed 7's flash crowd (30 s), its move priced
    over the dwell (_over_dwell), moved from two H100s to two A100s at 2.3 req/s at an early
    cycle 10 s after the one that saw the crowd rise, too close to it to see a rise of its own;
    the crowd took the A100s to six."""
    history = state.arrivals.get((service.namespace, service.name))
    if history is None or obs is None:
        return None
    if why := below_recent_peak(history.rates(), obs.window_s, z):
        return why
    if (rise := history.rise_within(obs.window_s)) is not None:
        ago = history.samples[-1].time - rise.time
        rising = f"{rise.rate:.3g} req/s, up to {rise.present:.3g} " + (f"{ago:.0f} s ago" if ago else "now")
        return f"the load is rising ({rising}): no move for a saving at a load in transit"
    if staying is None or held is None or held.num_replicas <= staying.num_replicas:
        return None
    return f"{held.num_replicas} replicas on {held.accelerator} are kept for a load it may come back to: no move for a saving now"


def _identifying(state: PlannerState, service: ManagedService, accelerator: str, obs: Observation | None, z: float) -> int | None:
    """One collector window while the ISVC's step costs are still being identified (a model with
    no profile on its GPU type, not yet read off the line: identify.py), else None (the HPA's
    default). The prior over-provisions by design, and each consolidation step must be measured
    at its count before the next can be read: under the default 300 s each step takes 300 s
    plus a window, and the first window comes only after the prior's count is held out, so an
    ISVC needed 15-16 minutes to be identified. One window asks a lower count to be what the
    planner asked throughout a measurement before the HPA applies it; the planner's sizing still
    keeps its margins for burstiness and the peak of its lookback (guards.py). Not where the
    load has risen within the lookback beyond noise (the rate now above the lowest of its
    cycles': a slow rise is within noise from one cycle to the next): the window's mean lags
    it, and a replica released would be started again a cold start later (granite-13b with no
    profile under the diurnal rise, seed 3, went from 5 replicas to 2 and back to 4 within
    150 s, 93% of its requests within the SLOs against 100% under the default hold)."""
    identification = state.learned.identified.get((service.model, accelerator))
    if identification is None or not identification.identifying or obs is None:
        return None
    history = state.arrivals.get((service.namespace, service.name))
    rates = history.rates() if history else []
    if rates and rise_beyond_noise(rates[-1], min(rates), obs.window_s, obs.window_s, z):
        return None
    return max(int(obs.window_s), 1)


def _unbound_released(obs: Observation | None, replicas: int) -> str | None:
    """Why the HPA's scale-down window is none this cycle, or None: every pod it keeps beyond
    the plan is bound to no node, waiting for a GPU. Such a pod serves nothing, and it is no
    hold for a load that comes back (it would start a cold start late all the same); but it
    takes the next GPU of its type that frees, ahead of the scale-ups the plan asks of other
    ISVCs, and a cluster autoscaler buys a node for it. The ReplicaSet deletes the pods bound to
    no node first (ActivePodsWithRanks in k8s.io/kubernetes pkg/controller/controller_utils.go),
    so where the plan keeps at least the bound pods, a window of none lets exactly those go; the
    bound ones the HPA holds beyond the plan keep their window. Traced on the Azure code trace
    (seed 4, 60 s): granite-13b and mistral-7b asked for a third H100 at 4 minutes, when the
    cluster's H100s were full, and the plan asked 2 again 30 s later; the HPA's 300 s window
    kept each third pod waiting for 5 minutes."""
    if obs is None or obs.bound_pods is None or not obs.unbound_pods:
        return None
    if not obs.bound_pods <= replicas < obs.bound_pods + obs.unbound_pods:
        return None
    waiting = obs.bound_pods + obs.unbound_pods - replicas
    return f"{waiting} pod{'s' if waiting > 1 else ''} beyond the plan wait for a GPU: let go now, not held for the HPA's window"


def _believed(service: ManagedService) -> ManagedService:
    """The service without its last decision when that fails its checks (the controller reads
    annotations through them already; a caller building these types itself may not)."""
    if service.last is None or service.last.problem() is None:
        return service
    return replace(service, last=None)


@dataclass(frozen=True)
class _Asked:
    """An allocation to size by the latency model: the ISVC, the optimizer's allocation, the
    batch it would run with and the load."""

    service: ManagedService
    alloc: Allocation
    max_batch: int
    load: Load


# an allocation with the latency model's replica count, a replica's capacity, the work scale and
# the step costs it used (_sized)
_SizedAllocation = tuple[Allocation, float, float, IterationParams]


def _gpus(catalog: Catalog, services: Mapping[str, ManagedService], allocations: Mapping[str, Allocation]) -> dict[str, int]:
    """GPUs per type that the allocations (by ISVC key) hold."""
    return gpus_held(catalog, ((services[key].model, a.accelerator, a.num_replicas) for key, a in allocations.items()))


def _sized(state: PlannerState, catalog: Catalog, asked: list[_Asked], settings: PlannerSettings) -> list[_SizedAllocation]:
    """Each optimizer's allocation at its `max_batch` with the latency model's replica count
    (within the ISVC's bounds, its cost scaled to match), a replica's capacity, the work scale and
    step costs it used: all ISVCs' capacity searches in one batch. Should the model fail on the batch (a
    bug meeting some ISVC's figures), each ISVC is sized alone, and those it fails on keep the
    optimizer's count."""
    try:
        counts = _model_replicas(state, catalog, asked, settings)
    except Exception:  # isolated below, reported with the ISVC
        counts = []
        for one in asked:
            try:
                counts += _model_replicas(state, catalog, [one], settings)
            except Exception as exc:  # this ISVC's figures: the optimizer's count stands
                log.error(
                    "%s: the latency model failed (%s: %s): sized by the optimizer", one.service.key, exc.__class__.__name__, exc
                )
                counts.append((0, 0.0, 0.0, NOT_SIZED))
    sized = []
    for one, (count, per_replica, work, costs) in zip(asked, counts, strict=True):
        alloc, service = one.alloc, one.service
        replicas = service.bounded(count or alloc.num_replicas)
        sized.append((replace(_on(alloc, replicas), max_batch=one.max_batch), per_replica, work, costs))
    return sized


def _model_replicas(
    state: PlannerState, catalog: Catalog, asked: list[_Asked], settings: PlannerSettings
) -> list[tuple[int, float, float, IterationParams]]:
    """Replicas by the latency model as learned, a replica's capacity, the work scale and step
    costs it used, for each (0s: it cannot size this one, keep the optimizer's count)."""
    loaded = [one for one in asked if not one.load.is_zero]
    wanted = [
        sizing.Sizing(
            sizing.Deployment(one.service.key, one.service.model, one.alloc.accelerator, one.max_batch),
            sizing.Shape(one.load.avg_in_tokens, one.load.avg_out_tokens),
            catalog.classes[one.service.service_class].targets[one.service.model],
        )
        for one in loaded
    ]
    found = sizing.per_replica_capacities(state.learned, catalog, wanted, settings.attainment_goal)
    if settings.load_aware_router:
        found = _pooled(state, catalog, loaded, wanted, found, settings.attainment_goal)
    found = iter(found)
    counts = []
    for one in asked:
        per_replica = None if one.load.is_zero else next(found)
        if per_replica is None:
            counts.append((0, 0.0, 0.0, NOT_SIZED))
            continue
        work = state.learned.work.get((one.service.model, one.alloc.accelerator), sizing.Estimate()).value
        costs = sizing.profile(
            catalog, state.learned, one.service.model, one.alloc.accelerator
        ).params  # sized above: iteration-based
        counts.append((sizing.replicas_for(one.load.arrival_rate_rpm / 60.0, per_replica), per_replica, work, costs))
    return counts


# the most replicas a fleet's pooling is sized over: what pooling is worth per replica levels off
# by then (x1.05-1.16 in fleets of 8 in the simulator, little more than in fleets of 4:
# benchmarks/latency_model.py --fleet), and the seat wait's Erlang sum grows with the pool's seats
MAX_POOL = 16


def _pooled(
    state: PlannerState,
    catalog: Catalog,
    loaded: list[_Asked],
    wanted: list[sizing.Sizing],
    found: list[float | None],
    goal: float,
) -> list[float | None]:
    """Each loaded ISVC's capacity a replica, one replica fewer than one replica's capacity asks
    for where that fleet behind a load-aware router meets the goal by the model's pooling (the
    replica's capacity in it), else as found: all such searches in one batch. Only on evidence
    that the ISVC meets its goal (its requests over the rise memory, some served): the model's
    pooling predicts a third to half of what the simulator's fleets gain, but a fleet that
    misses shows no such headroom, and an opening is held for the HPA's window before any
    evidence (chat-8b on the Azure code trace, at 89.5% of its requests within the SLOs, fell to
    84.0% with its opening pooled, and with pooling beyond its goal: its bursts over seconds,
    not the steady state, set its misses). Nor for a model with no profile: its step costs are
    identified to within about 10%, more than the few % a pool adds, and until then the model
    is a stand-in whose pool says nothing of the replicas (mistral-7b with no profile under the
    diurnal load, seed 1: 99.3% -> 91.1% of its requests within the SLOs with it)."""
    fewer: list[tuple[int, int, float]] = []
    for k, (one, per_replica) in enumerate(zip(loaded, found, strict=True)):
        rate = one.load.arrival_rate_rpm / 60.0  # as _model_replicas sizes it
        if not per_replica or (count := sizing.replicas_for(rate, per_replica)) <= 1:
            continue
        if (one.service.model, one.alloc.accelerator) in state.learned.identified:
            continue  # a model with no profile
        history = state.arrivals.get((one.service.namespace, one.service.name))
        if history is None or not meets_goal(history.samples, goal):
            continue
        fewer.append((k, count - 1, rate))
    asked = [replace(wanted[k], pool=min(count, MAX_POOL)) for k, count, _ in fewer]
    pooled = list(found)
    in_pools = sizing.per_replica_capacities(state.learned, catalog, asked, goal)
    for (k, count, rate), per_replica in zip(fewer, in_pools, strict=True):
        # exactly that fleet: a larger gain would size a fleet smaller than the pool it assumed
        if per_replica and sizing.replicas_for(rate, per_replica) == count:
            pooled[k] = per_replica
    return pooled


def _held(
    state: PlannerState,
    service: ManagedService,
    alloc: Allocation,
    per_replica: float,
    obs: Observation | None,
    now: float,
    settings: PlannerSettings,
    scale_down_s: int | None,
    z: float,
) -> Allocation:
    """No replica released that the load may need now while it rises beyond noise: the window's
    mean then lags the load (a step shows in full only a window later), so a count sized for it
    may be below what the load needs already, and releasing a replica now costs a cold start to
    undo. What holds a GPU (the replicas serving and those starting on a node) is kept up to
    the count for the most the rate may be now (guards.present_bound), or for the rate kept
    between rises that recur beyond the HPA's scale-down window in force (`scale_down_s`,
    None: the default; guards.retained_rate), whichever is more; a new GPU type or batch size
    is left as the optimizer sized it."""
    history = state.arrivals.get((service.namespace, service.name))
    last = service.last
    if not history or last is None or obs is None or (alloc.accelerator, alloc.max_batch) != (last.accelerator, last.max_batch):
        return alloc
    if per_replica <= 0 or alloc.num_replicas <= 0:
        return alloc
    sample = history.samples[-1]
    kept = sample.present if sample.rising else 0.0
    memory = history.since(now - settings.guards.rise_memory_s)
    # judged here, where the window in force is known; only where the memory's peak needs more
    # than asked (else the count for any rate kept is no more than asked)
    if sizing.replicas_for(max((s.rate for s in memory), default=0.0), per_replica) > alloc.num_replicas:
        kept = max(
            kept,
            retained_rate(
                memory,
                now,
                held_s=settings.guards.scale_down_window_s if scale_down_s is None else scale_down_s,
                period_s=settings.period_s,
                horizon_s=settings.startup_s + settings.period_s,
                window_s=obs.window_s,
                z=z,
                drain_s=settings.guards.backlog_drain_s,
                miss_budget=1.0 - settings.attainment_goal,
                opened=history.opened_since(now - settings.guards.rise_memory_s),
            ),
        )
    if kept <= 0:
        return alloc
    # what holds a GPU already: the replicas serving and those starting on a node, paid for in
    # part; a hold that let go only what had yet to serve released, at a startup beyond the
    # HPA's window, the replicas a spike asked for just before they served
    holding = max(state.learned.serving.get(service.key, (0, 0.0))[0], obs.bound_pods or 0)
    held = min(holding, sizing.replicas_for(kept, per_replica), service.max_replicas)
    if held <= alloc.num_replicas:
        return alloc
    return _on(alloc, held)


def _unplaced(service: ManagedService, load: Load, measured: float, now: float, scales: tuple[float, float]) -> Plan:
    last = service.last
    if load.is_zero and service.min_replicas == 0 and last is not None:
        idle = replace(last, replicas=0, arrival_rate=measured, cost=0.0, decided_at=now)
        return Plan(service, idle, reason="no load: scaled to zero (min-replicas 0)", outcome=Outcome.SCALED_TO_ZERO)
    if last is None:
        nothing = "no GPU type fits within the capacity and SLOs: nothing to decide yet"
        return Plan(service, None, reason=nothing, outcome=Outcome.NO_PLACEMENT)
    kept = replace(last, arrival_rate=measured, decided_at=now, ttft_scale=scales[0], itl_scale=scales[1])
    return Plan(service, kept, reason="cannot be placed within the capacity: keeps what it has", outcome=Outcome.CONSTRAINED)
