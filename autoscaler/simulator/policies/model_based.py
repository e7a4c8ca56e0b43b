"""Ours: the controller's planner (policy.planner.plan) driving the simulated cluster. An adapter
with no sizing of its own, so that what the simulator evaluates is what the controller ships.

Each tick is a controller cycle: vLLM's metrics over the collector's window become each ISVC's
Observation (observe.py); each ISVC is a ManagedService carrying the decision its annotation
records (LastDecision, rewritten only when the controller would write it); the cluster's GPUs,
less those its superseded revisions still hold, are the capacity; plan() decides. What the
controller leaves to Kubernetes is played here too: a roll-out (GPU type or batch size) starts
a new revision, and replica counts go through the HPA the controller writes per revision
(scale-down after a 300 s stabilisation, or the plan's shorter one while a model with no profile
is identified; the HPA's default scale-up limits; its metric is the desired count itself, at
zero tolerance), at the HPA's own syncs: every sync period, `hpa_phase_s` past its multiples,
each taking the count the last decision published (the HPA controller resyncs each HPA on its own
clock, which the controller's cycles do not move; a count published just after a sync waits a
whole sync period for the next, half of one on average).
Between ticks it probes the requests running + waiting every `probe_s`, as the controller's
queue watch does, and asks the engine for a cycle when planner.early_cycle says a queue builds
(at most once per the planner's early_interval_s). Where the scenario has a past, the
controller started at time zero recalls its lookback first (planner.recall, as the controller's
first cycle does from Prometheus).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ...optimizer.domain import Load
from ...policy.decisions import LastDecision, ManagedService
from ...policy.observation import WINDOW_S, Key, Observation, allan_factor
from ...policy.planner import Plan, PlannerSettings, PlannerState, early_cycle, plan, recall
from ...policy.rollout import offered_capacity
from ..engine import Decision, IsvcView
from ..observe import Observer, RequestRecords
from ..planning import capacity, world_catalog
from ..world import World
from .hpa import HpaBehavior, HpaSettings

NAMESPACE = "simulation"


@dataclass(frozen=True)
class ModelBasedSettings:
    period_s: float = 30.0
    window_s: float = WINDOW_S  # the collector's default
    probe_s: float = 5.0  # how often the requests in the system are looked at between cycles (the controller's default)
    hpa: HpaSettings = HpaSettings()  # its sync, stabilisation and scale-up limits (HpaBehavior has no tolerance)
    # when the HPA syncs, past each multiple of its sync period: the cycles fall on the period's
    # multiples, so a cycle's count is taken half a sync period later, the mean wait for an HPA
    # whose clock the cycles do not set (rounded up to the engine's 1 s sample tick)
    hpa_phase_s: float = 8.0


class ModelBasedPolicy:
    name = "ours"

    def __init__(
        self,
        world: World,
        opening: dict[int, Load],
        settings: ModelBasedSettings = ModelBasedSettings(),
        opening_arrivals: dict[int, np.ndarray] | None = None,
        recalled: Sequence[tuple[float, dict[int, Load], dict[int, np.ndarray]]] = (),
    ):
        """Decides the deployment at time zero from the opening load, as a controller that had
        watched it for a window would; `opening_arrivals` (per ISVC, the arrival times in the
        opening window, from 0) give the Allan factor its probes would have read (none: Poisson).
        `recalled`: the cycles before the start that a controller started then recalls from
        Prometheus (planner.recall), oldest first, each its time and the collector's window
        before it (loads and arrival times, from the window's start)."""
        self.world = world
        self.settings = settings
        self.period_s = settings.period_s
        self.catalog = world_catalog(world)
        self.capacity = capacity(world)
        # the operator sets the planner's startup time to the cluster's cold start, and says the
        # router balances by load: the simulator's routes to the fewest outstanding (engine._route)
        self.planner = PlannerSettings(period_s=settings.period_s, startup_s=world.cold_start_s, load_aware_router=True)
        self.state = PlannerState()
        self.last: list[LastDecision | None] = [None] * len(world.isvcs)
        self.hpas = [HpaBehavior(settings.hpa) for _ in world.isvcs]
        self.observer: Observer | None = None
        self._decided = self._probed = 0.0
        # per ISVC, what the last decision published for its HPA: the count and scale-down window
        self.published: dict[int, tuple[int, int | None]] = {}
        for at, loads, arrivals in recalled:
            recall(self.catalog, self._services(), self._watched(loads, arrivals), at, self.state, self.planner)
        observed = self._watched(opening, opening_arrivals or {})
        self.initial = {i: self._initial(i, p) for i, p in enumerate(self._plan(0.0, observed, self.capacity))}
        # the opening observation is made up (its rate, no requests in the system): no probe or
        # trend is measured against it; the cycles recalled before it stay
        for key, history in list(self.state.arrivals.items()):
            history.samples = deque(s for s in history.samples if s.time < 0.0)
            if not history.samples:
                del self.state.arrivals[key]

    def _watched(self, loads: dict[int, Load], arrivals: dict[int, np.ndarray]) -> dict[Key, Observation]:
        s = self.settings
        return {self._key(i): _watched(load, s.window_s, arrivals.get(i), s.probe_s, s.period_s) for i, load in loads.items()}

    def attach(self, records: RequestRecords) -> None:
        """The engine hands over its request records: what vLLM's metrics are read from."""
        self.observer = Observer(records, len(self.world.isvcs), self.settings.window_s, self.settings.period_s)

    def _key(self, index: int) -> Key:
        return (NAMESPACE, self.world.isvcs[index].name)

    def _services(self) -> list[ManagedService]:
        return [
            ManagedService(
                namespace=NAMESPACE,
                name=spec.name,
                model=spec.model,
                service_class=spec.service_class,
                accelerators=frozenset(spec.options),
                min_replicas=spec.min_replicas,
                max_replicas=spec.max_replicas,
                raw_deployment=False,
                spec_changes=True,
                last=self.last[index],
            )
            for index, spec in enumerate(self.world.isvcs)
        ]

    def _plan(
        self, now: float, observed: dict[Key, Observation], capacity: dict[str, int], free: dict[str, int] | None = None
    ) -> list[Plan]:
        plans = plan(self.catalog, capacity, self._services(), observed, now, self.state, self.planner, free=free)
        for index, p in enumerate(plans):
            if p.records_decision:
                self.last[index] = p.decision
        return plans

    def wants_cycle(self, now: float) -> bool:
        """Whether to decide now, before the period: a queue builds (planner.early_cycle)."""
        if self.observer is None or now - self._probed < self.settings.probe_s:
            return False
        self._probed = now
        if now - self._decided < self.planner.early_interval_s:
            return False
        in_system = {self._key(i): float(n) for i, n in enumerate(self.observer.in_system(now))}
        return bool(early_cycle(self.state, in_system, now, self.planner))

    def decide(self, now: float, views: list[IsvcView]) -> dict[int, Decision]:
        if self.observer is None:
            raise RuntimeError("ours reads vLLM's metrics off the request records: attach() them first")
        self._decided = now
        observed = {
            self._key(i): replace(
                obs,
                ready_replicas=views[i].ready,
                bound_pods=views[i].bound_pods,
                unbound_pods=views[i].unbound_pods,
                kv_cache_tokens=self._kv_cache_tokens(i, views[i].accelerator),
            )
            for i, obs in enumerate(self.observer.observe(now))
        }
        decisions = {}
        # as the controller: GPUs that superseded revisions still hold are not offered again
        offered = offered_capacity(self.capacity, (view.held_in_flight for view in views))
        free = offered_capacity(self.capacity, (view.gpus_held for view in views))
        for index, p in enumerate(self._plan(now, observed, offered, free)):  # plans come in the services' order
            if p.decision is None:
                continue  # nothing placeable: what runs stays
            self.published[index] = (p.decision.replicas, p.scale_down_s)
            if p.roll_out:
                decisions[index] = self._new_revision(index, p.decision)
        return decisions

    def sync(self, now: float, views: Callable[[], list[IsvcView]]) -> dict[int, Decision]:
        """What the HPAs take at this sample tick: at their syncs, each ISVC's published count
        through its HPA (up at once within its limits, down only after its window)."""
        period, phase = self.settings.hpa.sync_period_s, self.settings.hpa_phase_s
        # the nearest sync time, not a remainder of `now`: sample ticks summed in floating point
        # land a hair either side of it, and a remainder just under the period would read as none
        if self.published and abs(now - (phase + round((now - phase) / period) * period)) < 1e-6:
            current = views()
            return {
                index: Decision(self.hpas[index].replicas(now, current[index].replicas, replicas, scale_down_s))
                for index, (replicas, scale_down_s) in self.published.items()
            }
        return {}

    def _kv_cache_tokens(self, index: int, accelerator: str) -> float | None:
        """What its serving replicas' vllm:cache_config_info shows: num_gpu_blocks x block_size."""
        option = self.world.isvcs[index].options.get(accelerator)
        return None if option is None else float(option.kv_cache_tokens)

    def _new_revision(self, index: int, d: LastDecision) -> Decision:
        """A new revision starts at the decided count, under an HPA of its own."""
        self.hpas[index] = HpaBehavior(self.settings.hpa)
        return Decision(max(d.replicas, 1), d.accelerator, d.max_batch)

    def _initial(self, index: int, p: Plan) -> Decision:
        if p.decision is not None:
            return self._new_revision(index, p.decision)
        spec = self.world.isvcs[index]  # nothing placeable: the baselines' deployment
        return Decision(spec.min_replicas, spec.default_accelerator, spec.options[spec.default_accelerator].max_num_seqs)


def _watched(
    load: Load, window_s: float, arrivals: np.ndarray | None = None, probe_s: float = 5.0, recent_s: float = 30.0
) -> Observation:
    """A window's load as a collector would have seen it with nothing served (the opening, or a
    cycle of the past recalled): its rate and request shape, and from its arrivals the rate
    over its last `recent_s` (the collector's short window) and their Allan factor over the
    probes' intervals."""
    rate = load.arrival_rate_rpm / 60.0
    dispersion, pairs, seconds, recent = None, 0, 0.0, None  # no arrivals given: Poisson, no short window
    if arrivals is not None:
        probes = max(int(window_s // probe_s), 1)
        counts = np.bincount((arrivals // probe_s).astype(int), minlength=probes)[:probes]
        dispersion, pairs, seconds = allan_factor(counts, [probe_s] * probes)
        if 0 < recent_s < window_s:
            recent = float(np.count_nonzero(arrivals >= window_s - recent_s)) / recent_s
    return Observation(
        rate,
        rate,
        load.avg_in_tokens,
        load.avg_out_tokens,
        0.0,
        0.0,
        None,
        None,
        (),
        (),
        window_s=window_s,
        arrival_dispersion=dispersion,
        dispersion_pairs=pairs,
        dispersion_s=seconds,
        recent_rate=recent,
        recent_s=None if recent is None else recent_s,
        previous_measured=False,
    )
