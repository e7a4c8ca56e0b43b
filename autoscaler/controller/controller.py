"""The control loop: every period (and on /invoke) collect load, plan, actuate, publish; and
early, when the queue watch sees an ISVC's requests build faster than its replicas finish them.

Cluster state comes from watched caches (informers), so a cycle reads nothing from the API
server; the static data ConfigMap is parsed again only when it changes, and a bad edit keeps the
last good data (the error is logged and counted, nothing is lost).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..decision_stream import DecisionHub
from ..errors import InputError
from ..kserve import DEFAULT_MODE, GPU_PRODUCT_LABEL, REVISION_LABEL, latest_created_revision
from . import knative
from .actuator import ActuationReport, Actuator, ActuatorSettings
from .catalog import ClusterData, available_capacity, cluster_data, node_gpu_types, placed_afresh, pod_binding, ready_replicas
from ..policy.decisions import ManagedService
from ..policy.guards import lookback_s
from ..policy.observation import WINDOW_S, Key, Observation
from .collector import CollectError, slo_seconds
from ..kube import (
    CONFIG_MAPS,
    ApiError,
    HPAS,
    INFERENCE_SERVICES,
    NODES,
    POD_AUTOSCALERS,
    PODS,
    SERVERLESS_SERVICES,
    Informer,
    Kube,
)
from ..policy.planner import PlannerSettings, PlannerState, early_cycle, plan, recall
from . import decision_store
from .decision_store import DecisionStore
from .services import ServiceReader

log = logging.getLogger(__name__)
REFREEZE_CYCLES = 20  # 10 minutes at the default period
REACT_DELAY_S = 0.5  # events of a burst (a rollout's pods) gathered into one pass


@dataclass(frozen=True)
class ControllerSettings:
    namespace: str = "inference-autoscaler"  # where the data ConfigMap lives
    data_configmap: str = "inference-autoscaler-data"
    default_deployment_mode: str = DEFAULT_MODE  # the cluster's KServe `deploy.defaultDeploymentMode`
    planner: PlannerSettings = PlannerSettings()
    actuator: ActuatorSettings = ActuatorSettings()
    # how often the queue watch asks Prometheus for the requests in the system between cycles:
    # vLLM's gauges move at each scrape (commonly 5-15 s), so faster probes see nothing new
    probe_s: float = 5.0


@dataclass
class CycleReport:
    started_at: float
    collect_s: float = 0.0
    optimize_s: float = 0.0
    actuate_s: float = 0.0
    services: int = 0
    stale: int = 0
    rejected: list[str] = field(default_factory=list)
    writes: int = 0
    failures: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def total_s(self) -> float:
        return self.collect_s + self.optimize_s + self.actuate_s

    def as_dict(self) -> dict:
        return {
            "started_at": self.started_at,
            "collect_s": round(self.collect_s, 4),
            "optimize_s": round(self.optimize_s, 4),
            "actuate_s": round(self.actuate_s, 4),
            "total_s": round(self.total_s, 4),
            "services": self.services,
            "stale": self.stale,
            "rejected": self.rejected,
            "writes": self.writes,
            "failures": self.failures,
            "error": self.error,
        }


class Collector(Protocol):
    """What the controller needs of a collector (PrometheusCollector, or a stand-in in tests)."""

    async def collect(self, slos_s: dict[str, set[float]] | None = None) -> dict[Key, Observation]: ...

    async def in_system(self) -> dict[Key, float]:
        """Requests running + waiting now per ISVC (raises CollectError like collect)."""
        ...

    async def history(
        self, span_s: float, step_s: float, slos_s: dict[str, set[float]] | None = None
    ) -> list[tuple[float, dict[Key, Observation]]]:
        """(seconds ago, observations) every `step_s` over the last `span_s`, oldest first
        (raises CollectError like collect)."""
        ...


class Controller:
    def __init__(
        self,
        kube: Kube,
        collector: Collector,
        hub: DecisionHub,
        settings: ControllerSettings = ControllerSettings(),
        reserved_gpus: Callable[[], Mapping[str, int]] = dict,
        clock: Callable[[], float] = time.time,
    ):
        self.kube = kube
        self.collector = collector
        self.hub = hub
        self.settings = settings
        self.reserved_gpus = reserved_gpus
        self.clock = clock
        self.informers = {
            "isvcs": Informer(kube, INFERENCE_SERVICES),
            "nodes": Informer(kube, NODES),
            "pods": Informer(kube, PODS),
            "pas": Informer(kube, POD_AUTOSCALERS),
            "sks": Informer(kube, SERVERLESS_SERVICES, label_selector="app.kubernetes.io/managed-by=inference-autoscaler"),
            "hpas": Informer(kube, HPAS, label_selector="app.kubernetes.io/managed-by=inference-autoscaler"),
            "data": Informer(kube, CONFIG_MAPS, namespace=settings.namespace, label_selector=decision_store.NOT_DECISIONS),
            "decisions": Informer(kube, CONFIG_MAPS, namespace=settings.namespace, label_selector=decision_store.SELECTOR),
        }
        self.decisions = DecisionStore(kube, self.informers["decisions"], settings.namespace)
        self.actuator = Actuator(kube, self.informers, self.decisions, settings.actuator)
        self.state = PlannerState()
        self.services = ServiceReader(self.decisions.read, settings.default_deployment_mode)
        self.data: ClusterData | None = None
        self._data_version = ""
        self.data_error = ""
        self.last_report: CycleReport | None = None
        self.cycles = 0
        self._recall_due = True  # the first cycle with the cluster's data recalls the ISVCs' lookback
        self.recalled_cycles = 0
        self.failed_cycles = 0
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._plans: list | None = None  # the last cycle's, which the reactor applies again
        self._kick = asyncio.Event()
        self.reactions = 0
        self.early_cycles = 0
        # changes the Knative side must follow within seconds, not at the next cycle: our PAs,
        # SKSs and HPAs (both informers hold only ours), pods of our PAs' revisions
        self.informers["pas"].listeners.append(lambda _, pa: knative.is_ours(pa) and self._kick.set())
        self.informers["sks"].listeners.append(lambda _, __: self._kick.set())
        self.informers["hpas"].listeners.append(lambda _, __: self._kick.set())
        self.informers["pods"].listeners.append(self._on_pod)

    def _on_pod(self, _: str, pod: dict) -> None:
        meta = pod.get("metadata") or {}
        revision = (meta.get("labels") or {}).get(REVISION_LABEL)
        pa = self.informers["pas"].objects.get((meta.get("namespace", ""), revision)) if revision else None
        if pa is not None and knative.is_ours(pa):
            self._kick.set()

    async def react(self) -> None:
        """Apply the last cycle's plans to the Knative side again whenever _on_event kicks."""
        while True:
            await self._kick.wait()
            await asyncio.sleep(REACT_DELAY_S)
            self._kick.clear()
            if self._plans is None or self.data is None:  # before the first cycle nothing is known to apply
                continue
            try:
                async with self._lock:
                    await self.actuator.reconcile_revisions(self._plans, self.data.catalog, self.clock())
                self.reactions += 1
            except Exception:  # as in run(): the next event or cycle tries again
                log.exception("reacting to Knative events failed")

    async def watch_queues(self) -> None:
        """Every probe_s, the requests in the system of every ISVC; a cycle at once when one's
        build faster than its replicas finish them (planner.early_cycle), unless a cycle started
        within the planner's early_interval_s (the HPA would not act on it sooner)."""
        while True:
            await asyncio.sleep(self.settings.probe_s)
            if self.last_report is None:
                continue  # before the first cycle nothing is known to compare with
            try:
                building = early_cycle(self.state, await self.collector.in_system(), self.clock(), self.settings.planner)
            except CollectError as exc:  # the next probe, or the period's cycle, asks again
                log.debug("queue probe: %s", exc)
                continue
            if not building:
                continue
            try:
                report = await self.cycle(unless_within_s=self.settings.planner.early_interval_s)
            except Exception:  # as in run(): the next probe or cycle tries again
                log.exception("early control cycle failed")
                self.failed_cycles += 1
                continue
            if report is not None:
                self.early_cycles += 1
                log.info("early cycle: requests building up at %s", ", ".join(f"{ns}/{name}" for ns, name in building))

    async def start(self, sync_timeout_s: float = 60.0) -> None:
        self._tasks = [asyncio.create_task(i.run(), name=f"watch {name}") for name, i in self.informers.items()]
        try:
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.informers.values())), sync_timeout_s)
        except asyncio.TimeoutError:
            await self.stop()
            missing = sorted(name for name, i in self.informers.items() if not i.synced.is_set())
            raise ApiError(
                0, f"{self.kube.host} did not list {', '.join(missing)} within {sync_timeout_s:g} s (see the log)"
            ) from None

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _cluster_data(self) -> ClusterData | None:
        configmap = self.informers["data"].objects.get((self.settings.namespace, self.settings.data_configmap))
        if configmap is None:
            self.data_error = f"ConfigMap {self.settings.namespace}/{self.settings.data_configmap} not found"
            return self.data
        version = configmap["metadata"].get("resourceVersion", "")
        if version != self._data_version:
            self._data_version = version
            try:
                self.data = cluster_data(configmap, f"ConfigMap {self.settings.namespace}/{self.settings.data_configmap}")
                self.data_error = ""
            except InputError as exc:
                self.data_error = f"{exc} (keeping the last good data)"
                log.error("%s", self.data_error)
        return self.data

    async def cycle(self, unless_within_s: float = 0.0) -> CycleReport | None:
        """Run one cycle; None (nothing run) when the last one started less than `unless_within_s`
        ago, checked under the lock so that concurrent callers cannot slip in one after another."""
        async with self._lock:
            last = self.last_report
            if last is not None and self.clock() - last.started_at < unless_within_s:
                return None
            report = await self._cycle()
            self._settle_heap()
            self.cycles += 1
            self.failed_cycles += bool(report.error)
            self.last_report = report
            log.info(
                "cycle: %d ISVCs (%d stale) collect %.3f s, optimize %.3f s, actuate %.3f s, %d writes%s",
                report.services,
                report.stale,
                report.collect_s,
                report.optimize_s,
                report.actuate_s,
                report.writes,
                f"; {report.error}" if report.error else "",
            )
            return report

    def _settle_heap(self) -> None:
        """Keep the cyclic GC off the long-lived caches (1,000s of ISVC, HPA, pod objects): left
        in its generations, each full collection walks them all and costs a cycle ~40% more CPU
        (measured by benchmarks/control_loop.py). What survives a cycle is frozen; every
        REFREEZE_CYCLES a full collection runs first, so cycles among frozen objects that died
        since are still reclaimed."""
        if self.cycles % REFREEZE_CYCLES == 0:
            gc.unfreeze()
            gc.collect()
        gc.freeze()

    async def _cycle(self) -> CycleReport:
        now = self.clock()
        report = CycleReport(started_at=now)
        data = self._cluster_data()
        if data is None:
            report.error = self.data_error
            return report
        started = time.perf_counter()
        try:
            observed = await self.collector.collect(slo_seconds(data.catalog))
        except CollectError as exc:
            observed = {}
            report.error = f"{exc}: last decisions kept, marked stale"
        services, rejected = self.services.read(self.informers["isvcs"].objects.values(), data.catalog)
        if self._recall_due:
            self._recall_due = False
            await self._recall(data, services, now)
        report.collect_s = time.perf_counter() - started

        started = time.perf_counter()
        report.rejected = [f"{r.namespace}/{r.name}: {r.problem}" for r in rejected]
        isvcs = self.informers["isvcs"].objects
        latest = {(s.namespace, s.name): latest_created_revision(isvcs.get((s.namespace, s.name)) or {}) for s in services}
        nodes = self.informers["nodes"].objects.values()
        types = node_gpu_types(nodes, data)
        pods, reserved = self.informers["pods"].objects.values(), self.reserved_gpus()
        capacity = available_capacity(nodes, types, pods, lambda pod: placed_afresh(pod, latest), reserved)
        free = available_capacity(nodes, types, pods, lambda _: False, reserved)
        # the replicas that served the window, as the simulator gives them (unknown: the last
        # decision's count), and the pods bound to a node or waiting for one
        ready, binding = ready_replicas(pods), pod_binding(pods)
        for key, obs in observed.items():
            bound, unbound = binding.get(key, (None, None))
            observed[key] = replace(obs, ready_replicas=ready.get(key), bound_pods=bound, unbound_pods=unbound)
        plans = plan(data.catalog, capacity, services, observed, now, self.state, self.settings.planner, free=free)
        report.services = len(plans)
        report.stale = sum(p.stale for p in plans)
        report.optimize_s = time.perf_counter() - started

        started = time.perf_counter()
        products: dict[str, set[str]] = {}
        for node in nodes:
            name = node["metadata"]["name"]
            if name in types:
                products.setdefault(types[name], set()).add(node["metadata"]["labels"][GPU_PRODUCT_LABEL])
        actuation: ActuationReport = await self.actuator.apply(plans, data.catalog, products, now)
        self._plans = plans
        self.hub.publish(actuation.decisions)
        live = (isvc["metadata"].get("uid", "") for isvc in self.informers["isvcs"].objects.values())
        report.writes = actuation.writes + await self.decisions.collect_garbage(live)
        report.failures = actuation.failures
        report.actuate_s = time.perf_counter() - started
        return report

    async def _recall(self, data: ClusterData, services: list[ManagedService], now: float) -> None:
        """Before the first plan, the ISVCs' lookback as the collector would have read it at
        each period (planner.recall): a controller started or failed over beside running ISVCs
        plans its first cycles with their load's movement over minutes, not one window of it.
        Prometheus failing here costs only that: the planner starts from one window."""
        settings = self.settings.planner
        span = lookback_s(WINDOW_S, settings.period_s, settings.startup_s)
        try:
            past = await self.collector.history(span, settings.period_s, slo_seconds(data.catalog))
        except CollectError as exc:
            log.warning("the ISVCs' load before this start is not recalled (%s): the first cycles plan from one window", exc)
            return
        for ago, observed in past:
            recall(data.catalog, services, observed, now - ago, self.state, settings)
        self.recalled_cycles = len(past)
        log.info("recalled %d cycles of the ISVCs' load before this start", len(past))

    async def run(self) -> None:
        """Cycle every period; /invoke and the queue watch run extra cycles in between and the
        reactor passes over the Knative side on its events (the lock serialises them)."""
        reactor = asyncio.create_task(self.react(), name="react to Knative events")
        watch = asyncio.create_task(self.watch_queues(), name="watch queues")
        try:
            while True:
                try:
                    await self.cycle()
                except Exception:  # a bug in one cycle must not end the loop; the next one retries
                    log.exception("control cycle failed")
                    self.failed_cycles += 1
                await asyncio.sleep(self.settings.planner.period_s)
        finally:
            reactor.cancel()
            watch.cancel()
            await asyncio.gather(reactor, watch, return_exceptions=True)
