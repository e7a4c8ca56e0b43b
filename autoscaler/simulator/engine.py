"""Discrete-event simulation of vLLM-like replicas under an autoscaling policy.

Each replica runs a model of vLLM's engine (server.py: its scheduler, KV blocks and step
clock, by default V1 with chunked prefill); the engine routes requests to it and wakes it when
its step, or run of identical decode steps, ends.

Replicas are billed from the moment a GPU is assigned until they stop or the run ends (the same
cut for every replica), start serving after the cold start, and when scaled down stop taking
requests and finish what they hold. A replica that got no GPU waits for one and never serves.
Requests that wait longer than the client timeout before starting are dropped. Decisions come
from a policy called every `policy.period_s` seconds with an observation of every ISVC, and in
between whenever a policy with a `wants_cycle(now)` method (ours) asks for one at a sample
tick (a queue building: the controller's early cycle); a policy with a `sync` method (ours) has
its replica counts taken at its HPAs' syncs, on their own clock.

Revisions follow Knative: a new GPU type or batch size is a new revision, which becomes Ready
once the replicas it was created with are (its initial scale; fewer if scaled down before);
traffic goes to the latest Ready revision. The decision applies
to the latest created and the latest Ready revision (as our actuator writes it), so the serving
revision keeps scaling while a new one waits for GPUs; every other revision is unreachable and
scales to zero.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .observe import RequestRecords
from .server import Ledger, Steps, make_server
from .world import Scenario, ServingOption

SAMPLE_PERIOD_S = 1.0  # how often in-flight counts are sampled (KPA's scrape interval)
SERIES_PERIOD_S = 10.0  # how often replica counts are recorded for the report
CLIENT_TIMEOUT_S = 120.0

DRAIN_LIMIT_S = 3600.0  # after the traffic window, stop waiting for stragglers after this long

STARTING, READY, DRAINING, STOPPED = range(4)
EVENT_COMPLETION, EVENT_READY, EVENT_SAMPLE, EVENT_POLICY = range(4)


@dataclass(frozen=True)
class Decision:
    replicas: int
    accelerator: str | None = None  # None: keep the current GPU type and batch size
    max_batch: int | None = None


@dataclass
class IsvcView:
    """What a policy may observe of one ISVC, as a collector and the API server would show it."""

    name: str
    accelerator: str
    max_batch: int
    replicas: int  # desired replicas of the serving revision
    ready: int
    in_flight: int  # running + waiting + buffered
    samples: deque  # in-flight count every SAMPLE_PERIOD_S, newest last
    # GPUs per type held by its older revisions (the one serving until the newest is Ready, those
    # draining), as pods of other revisions show in the API server
    held_in_flight: dict[str, int] = field(default_factory=dict)
    gpus_held: dict[str, int] = field(default_factory=dict)  # per type, every revision together
    # the serving revision's replicas holding a GPU and those waiting for one, as its pods bound
    # to a node or not show in the API server; None while another revision is in flight
    bound_pods: int | None = None
    unbound_pods: int | None = None


class Policy(Protocol):
    """Decides from views; a policy with an `attach(records)` method (ours) is also given the
    per-request records (observe.RequestRecords) that vLLM's metrics are read from, one with a
    `wants_cycle(now) -> bool` method is asked at every sample tick whether to decide now,
    before its period, and one with a `sync(now, views) -> {index: Decision}` method is asked at
    every sample tick for what the HPAs it writes do then (ours: they sync on their own clock,
    not at its decisions; `views()` gives the views, built only where an HPA syncs)."""

    name: str
    period_s: float

    def decide(self, now: float, views: list[IsvcView]) -> dict[int, Decision]: ...


class Replica:
    __slots__ = (
        "billed_from",
        "cards",
        "isvc",
        "option",
        "revision",
        "server",
        "state",
        "version",
    )

    def __init__(self, isvc: int, revision: Revision, option: ServingOption, now: float, server):
        self.isvc = isvc
        self.revision = revision
        self.option = option
        self.server = server  # server.VllmServer or StallServer: its scheduler and KV cache
        self.state = STARTING
        self.version = 0
        self.billed_from = now

    @property
    def load(self) -> int:
        return self.server.load

    @property
    def has_gpu(self) -> bool:
        return not math.isnan(self.billed_from)


@dataclass
class Revision:
    accelerator: str
    max_batch: int
    desired: int
    replicas: list = field(default_factory=list)
    # Knative's Ready condition: set once its initial scale's replicas are ready (the whole group
    # it was created with, so a new revision never starts under-provisioned), and kept; a
    # scale-up after creation is not waited for, as Knative's ScaleTargetInitialized is set once
    promoted: bool = False
    initial_scale: int = 0


@dataclass
class IsvcState:
    index: int
    revisions: list[Revision]
    buffer: deque = field(default_factory=deque)  # requests held while no replica is ready
    samples: deque = field(default_factory=lambda: deque(maxlen=600))
    in_flight: int = 0
    actions: int = 0
    new_revisions: int = 0  # GPU-type or batch changes after time zero


@dataclass
class SimulationResult:
    policy: str
    first_token: np.ndarray  # s, nan if never started
    finish: np.ndarray  # s, nan if dropped
    dropped: np.ndarray
    gpu_hours: np.ndarray  # per ISVC
    cost: np.ndarray  # per ISVC, dollars
    actions: np.ndarray  # per ISVC, replica-count or revision changes
    revisions: np.ndarray  # per ISVC, new revisions (GPU-type or batch changes) after time zero
    series_time: np.ndarray
    series_replicas: np.ndarray  # (time, ISVC) replicas holding a GPU
    peak_gpus: dict[str, int]  # per GPU type, the most cards held at once


class Simulation:
    def __init__(self, scenario: Scenario, policy: Policy, initial: dict[int, Decision]):
        self.scenario = scenario
        self.world = scenario.world
        self.policy = policy
        self.wants_cycle = getattr(policy, "wants_cycle", None)
        self.sync = getattr(policy, "sync", None)
        req = scenario.requests
        self.arrival = req.time.tolist()
        self.req_isvc = req.isvc.tolist()
        self.req_in = req.in_tokens.tolist()
        self.req_out = req.out_tokens.tolist()
        n = len(req)
        self.first_token = [math.nan] * n
        self.finish = [math.nan] * n
        self.dropped = [False] * n
        # each ISVC's engine steps with output, its replicas together (vLLM's step count; read by
        # benchmarks/latency_model.py --identity, not by the planner)
        self.steps = [Steps() for _ in self.world.isvcs]
        if hasattr(policy, "attach"):
            policy.attach(
                RequestRecords(
                    self.arrival, self.req_isvc, self.req_in, self.req_out, self.first_token, self.finish, self.dropped
                )
            )
        self.ledger = Ledger(
            self.arrival, self.req_in, self.req_out, self.first_token, self._finish, self._drop, CLIENT_TIMEOUT_S
        )
        self.events: list = []
        self.seq = 0
        self.now = 0.0
        self.end = scenario.duration_s
        self.free = {name: gpu.capacity for name, gpu in self.world.gpus.items()}
        self.peak_gpus = dict.fromkeys(self.world.gpus, 0)
        self.pending: deque[Replica] = deque()  # waiting for a GPU
        self.isvcs = []
        for index, spec in enumerate(self.world.isvcs):
            decision = initial[index]
            acc = decision.accelerator or spec.default_accelerator
            batch = decision.max_batch or spec.options[acc].max_num_seqs
            self.isvcs.append(IsvcState(index, [Revision(acc, batch, 0, promoted=True)]))
        self.gpu_seconds = [0.0] * len(self.isvcs)
        self.cost = [0.0] * len(self.isvcs)
        self.series_time: list[float] = []
        self.series_replicas: list[list[int]] = []
        for index, decision in initial.items():
            self.apply(index, decision, initial=True)
            for replica in list(self._all_replicas(self.isvcs[index])):
                # the initial fleet is warm at time zero where it got a GPU; the rest waits for one
                if replica.state == STARTING and replica.has_gpu:
                    self._become_ready(replica)

    # ----------------------------------------------------------------- events
    def _push(self, time: float, kind: int, payload=None, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (time, self.seq, kind, payload, version))

    def run(self, progress: Callable[[float], None] | None = None) -> SimulationResult:
        end = self.scenario.duration_s
        self._push(SAMPLE_PERIOD_S, EVENT_SAMPLE)
        self._push(self.policy.period_s, EVENT_POLICY)
        arrivals, count, next_arrival = self.arrival, len(self.arrival), 0
        events = self.events
        last_progress = 0.0
        while True:
            arrival_time = arrivals[next_arrival] if next_arrival < count else math.inf
            if events and events[0][0] <= arrival_time:
                time, _, kind, payload, version = heapq.heappop(events)
                if time > end and kind in (EVENT_SAMPLE, EVENT_POLICY):
                    if next_arrival >= count and (not self._busy() or time > end + DRAIN_LIMIT_S):
                        break
                    if kind == EVENT_POLICY:
                        continue  # after the traffic window, replicas only drain what they hold
                self.now = time
                if kind == EVENT_COMPLETION:
                    if version == payload.version:
                        self._wake(payload)
                elif kind == EVENT_READY:
                    if payload.state == STARTING:
                        self._become_ready(payload)
                elif kind == EVENT_SAMPLE:
                    self._sample()
                    self._push(time + SAMPLE_PERIOD_S, EVENT_SAMPLE)
                    if self.wants_cycle is not None and time <= end and self.wants_cycle(time):
                        self._decide()
                    if self.sync is not None and time <= end:
                        self._apply_all(self.sync(time, self.views))
                else:
                    self._decide()
                    self._push(time + self.policy.period_s, EVENT_POLICY)
            elif next_arrival < count:
                self.now = arrival_time
                self._arrive(next_arrival)
                next_arrival += 1
            else:
                break
            if progress is not None and self.now - last_progress >= 60.0:
                last_progress = self.now
                progress(min(self.now, end))
        self._stop_billing_all()
        return self._result()

    def _busy(self) -> bool:
        return any(state.in_flight for state in self.isvcs)

    # --------------------------------------------------------------- requests
    def _arrive(self, request: int) -> None:
        state = self.isvcs[self.req_isvc[request]]
        state.in_flight += 1
        replica = self._route(state)
        if replica is None:
            state.buffer.append(request)
        elif replica.server.submit(request, self.now):
            self._schedule(replica)

    def _route(self, state: IsvcState) -> Replica | None:
        """Least outstanding requests among the ready replicas of the newest promoted revision
        (of any revision with a ready replica, should the promoted one have none)."""
        candidates = [r for r in state.revisions if r.promoted] or state.revisions
        for revisions in (reversed(candidates), reversed(state.revisions)):
            for revision in revisions:
                best, best_load = None, 1 << 30
                for replica in revision.replicas:
                    if replica.state == READY and replica.load < best_load:
                        best, best_load = replica, replica.load
                if best is not None:
                    return best
        return None

    def _schedule(self, replica: Replica) -> None:
        """Wake the replica's server when its step ends (an earlier pending wake goes stale)."""
        replica.version += 1
        if replica.server.next_event < math.inf:
            self._push(replica.server.next_event, EVENT_COMPLETION, replica, replica.version)

    def _wake(self, replica: Replica) -> None:
        replica.server.wake(self.now)
        self._schedule(replica)
        if replica.state == DRAINING and replica.server.idle:
            self._stop(replica)

    def _finish(self, request: int, time: float) -> None:
        self.finish[request] = time
        self.isvcs[self.req_isvc[request]].in_flight -= 1

    def _drop(self, request: int) -> None:
        self.dropped[request] = True
        self.isvcs[self.req_isvc[request]].in_flight -= 1

    # --------------------------------------------------------------- replicas
    def _all_replicas(self, state: IsvcState):
        for revision in state.revisions:
            yield from revision.replicas

    def _start(self, state: IsvcState, revision: Revision) -> None:
        option = self.world.isvcs[state.index].options[revision.accelerator]
        server = make_server(
            self.world.engine,
            option.truth,
            self.ledger,
            accelerator=revision.accelerator,
            max_num_seqs=revision.max_batch,
            steps=self.steps[state.index],
        )
        replica = Replica(state.index, revision, option, self.now, server)
        revision.replicas.append(replica)
        if self.free[revision.accelerator] > 0:
            self._assign_gpu(replica)
        else:
            replica.billed_from = math.nan
            self.pending.append(replica)

    def _assign_gpu(self, replica: Replica) -> None:
        accelerator = replica.revision.accelerator
        self.free[accelerator] -= 1
        held = self.world.gpus[accelerator].capacity - self.free[accelerator]
        self.peak_gpus[accelerator] = max(self.peak_gpus[accelerator], held)
        replica.billed_from = self.now
        self._push(self.now + self.world.cold_start_s, EVENT_READY, replica)

    def _become_ready(self, replica: Replica) -> None:
        replica.state = READY
        state = self.isvcs[replica.isvc]
        self._reconcile_revisions(state)
        while state.buffer:
            request = state.buffer.popleft()
            if self.now - self.arrival[request] > CLIENT_TIMEOUT_S:
                self._drop(request)
                continue
            target = self._route(state)
            if target.server.submit(request, self.now):
                self._schedule(target)

    def _serving(self, state: IsvcState) -> Revision:
        """The latest Ready revision (the first one counts as Ready: it has nothing to replace)."""
        return next(r for r in reversed(state.revisions) if r.promoted)

    def _reconcile_revisions(self, state: IsvcState) -> None:
        """Mark the newest revision Ready once its initial scale's replicas are; scale to zero every
        revision that is neither the latest created nor the latest Ready (Knative drops the
        min-scale of unreachable revisions), and forget revisions with nothing left."""
        newest = state.revisions[-1]
        needed = max(min(newest.initial_scale, newest.desired), 1)
        if not newest.promoted and sum(1 for r in newest.replicas if r.state == READY) >= needed:
            newest.promoted = True
        serving = self._serving(state)
        for revision in list(state.revisions):
            if revision is not serving and revision is not newest:
                revision.desired = 0
                for replica in list(revision.replicas):
                    self._release(replica)
        state.revisions = [r for r in state.revisions if r.replicas or r is serving or r is newest]

    def _release(self, replica: Replica) -> None:
        """Scale one replica down: cancel it if it has no GPU yet, else let it finish its work."""
        if replica.state == STARTING:
            if replica.has_gpu:
                self._stop(replica)
            else:
                self.pending.remove(replica)
                replica.state = STOPPED
                replica.revision.replicas.remove(replica)
            return
        if replica.state == READY:
            replica.state = DRAINING
            if replica.server.idle:
                self._stop(replica)

    def _stop(self, replica: Replica) -> None:
        """Stop a replica that holds a GPU: bill it, free the GPU and hand it to a waiting replica."""
        replica.state = STOPPED
        replica.version += 1
        replica.revision.replicas.remove(replica)
        self._bill(replica, self.now)
        self.free[replica.revision.accelerator] += 1
        self._start_pending()

    def _bill(self, replica: Replica, until: float) -> None:
        # billing stops at the end of the run for every replica, draining or not
        seconds = max(min(until, self.end) - replica.billed_from, 0.0)
        gpu = self.world.gpus[replica.revision.accelerator]
        self.gpu_seconds[replica.isvc] += seconds
        self.cost[replica.isvc] += seconds / 3600.0 * gpu.cost_per_hour
        replica.billed_from = max(until, replica.billed_from)

    def _start_pending(self) -> None:
        waiting = deque()
        while self.pending:
            replica = self.pending.popleft()
            if self.free[replica.revision.accelerator] > 0:
                self._assign_gpu(replica)
            else:
                waiting.append(replica)
        self.pending = waiting

    def _stop_billing_all(self) -> None:
        for state in self.isvcs:
            for replica in self._all_replicas(state):
                if replica.has_gpu:
                    self._bill(replica, self.end)

    # ----------------------------------------------------------------- policy
    def _sample(self) -> None:
        for state in self.isvcs:
            # the activator gives up on requests it has held past the client timeout
            while state.buffer and self.now - self.arrival[state.buffer[0]] > CLIENT_TIMEOUT_S:
                self._drop(state.buffer.popleft())
            state.samples.append(state.in_flight)
        if not self.series_time or self.now - self.series_time[-1] >= SERIES_PERIOD_S - 1e-9:
            self.series_time.append(self.now)
            self.series_replicas.append(
                [sum(1 for r in self._all_replicas(s) if r.has_gpu and r.state != STOPPED) for s in self.isvcs]
            )

    @staticmethod
    def _gpus(revision: Revision) -> int:
        return sum(1 for r in revision.replicas if r.has_gpu)

    def views(self) -> list[IsvcView]:
        result = []
        for state in self.isvcs:
            newest = state.revisions[-1]
            held: dict[str, int] = {}
            for revision in state.revisions[:-1]:
                held[revision.accelerator] = held.get(revision.accelerator, 0) + self._gpus(revision)
            every = dict(held)
            every[newest.accelerator] = every.get(newest.accelerator, 0) + self._gpus(newest)
            alone = len(state.revisions) == 1
            live = [r for r in newest.replicas if r.state in (STARTING, READY)]  # a draining pod is terminating
            bound = sum(1 for r in live if r.has_gpu)
            result.append(
                IsvcView(
                    name=self.world.isvcs[state.index].name,
                    accelerator=newest.accelerator,
                    max_batch=newest.max_batch,
                    replicas=newest.desired,
                    ready=sum(1 for r in self._all_replicas(state) if r.state == READY),
                    in_flight=state.in_flight,
                    samples=state.samples,
                    held_in_flight=held,
                    gpus_held=every,
                    bound_pods=bound if alone else None,
                    unbound_pods=len(live) - bound if alone else None,
                )
            )
        return result

    def _decide(self) -> None:
        self._apply_all(self.policy.decide(self.now, self.views()))

    def _apply_all(self, decisions: dict[int, Decision]) -> None:
        for index, decision in decisions.items():
            self.apply(index, decision)

    def apply(self, index: int, decision: Decision, initial: bool = False) -> None:
        spec = self.world.isvcs[index]
        state = self.isvcs[index]
        newest = state.revisions[-1]
        replicas = min(max(decision.replicas, spec.min_replicas), spec.max_replicas)
        accelerator = decision.accelerator or newest.accelerator
        max_batch = decision.max_batch or newest.max_batch
        changed = (accelerator, max_batch) != (newest.accelerator, newest.max_batch)
        if changed:
            newest = Revision(accelerator, max_batch, 0, initial_scale=replicas)
            state.revisions.append(newest)
            state.new_revisions += not initial
        for revision in {id(r): r for r in (self._serving(state), newest)}.values():
            if revision.desired != replicas:
                self._scale(state, revision, replicas)
                changed = True
        if changed and not initial:
            state.actions += 1
        self._reconcile_revisions(state)

    def _scale(self, state: IsvcState, revision: Revision, replicas: int) -> None:
        revision.desired = replicas
        live = [r for r in revision.replicas if r.state in (STARTING, READY)]
        for _ in range(replicas - len(live)):
            self._start(state, revision)
        if replicas < len(live):
            # cancel replicas waiting for a GPU first, then those starting, then the least loaded
            victims = sorted(live, key=lambda r: (r.has_gpu, r.state == READY, r.load))[: len(live) - replicas]
            for replica in victims:
                self._release(replica)

    def _result(self) -> SimulationResult:
        return SimulationResult(
            policy=self.policy.name,
            first_token=np.array(self.first_token),
            finish=np.array(self.finish),
            dropped=np.array(self.dropped),
            gpu_hours=np.array(self.gpu_seconds) / 3600.0,
            cost=np.array(self.cost),
            actions=np.array([s.actions for s in self.isvcs]),
            revisions=np.array([s.new_revisions for s in self.isvcs]),
            series_time=np.array(self.series_time),
            series_replicas=np.array(self.series_replicas, dtype=float).reshape(len(self.series_time), len(self.isvcs)),
            peak_gpus=dict(self.peak_gpus),
        )


def simulate(scenario: Scenario, policy: Policy, initial: dict[int, Decision], progress=None) -> SimulationResult:
    return Simulation(scenario, policy, initial).run(progress)
