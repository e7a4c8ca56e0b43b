"""Sends plans to the cluster: the stored decision (decision_store.py) and a status condition of
each ISVC, HPAs, our Knative PodAutoscalers (HPA, ServerlessService, status), and the decision
stream. A replica change writes nothing KServe propagates into a revision or pod template: only
a roll-out (a new GPU type or batch size, when the ISVC allows spec changes) patches the spec.

Writes happen only where the watched copy differs from what is wanted, so a steady cycle of
1,000 ISVCs costs a handful of calls; each write retries on conflicts and server errors, and one
ISVC's failure (an API error, or a bug on its plan) does not stop the others'.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..kserve import REVISION_LABEL, predictor_deployment, scaled_by_keda
from ..optimizer.domain import Catalog
from ..proto import decisions_pb2 as pb
from . import knative
from ..kube import (
    HPAS,
    INFERENCE_SERVICES,
    POD_AUTOSCALERS,
    SERVERLESS_SERVICES,
    ApiError,
    Informer,
    Kube,
    DEPLOYMENTS,
    with_retries,
)
from .conditions import rfc3339, write_condition
from .decision_store import DecisionStore
from .manifests import condition, decision_message, hpa, hpa_differs, spec_patch
from ..policy.planner import Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActuatorSettings:
    hpa_tolerance: bool = True  # honoured from Kubernetes 1.35 (1.33-1.34: alpha gate), else dropped
    concurrency: int = 32


@dataclass
class ActuationReport:
    writes: int = 0
    failures: list[str] = field(default_factory=list)
    decisions: list[pb.Decision] = field(default_factory=list)


class Actuator:
    def __init__(
        self,
        kube: Kube,
        informers: Mapping[str, Informer],
        decisions: DecisionStore,
        settings: ActuatorSettings = ActuatorSettings(),
    ):
        self.kube = kube
        self.decisions = decisions
        self.informers = informers
        self.settings = settings
        # per HPA: (the spec we last sent, the spec the API server stored from it). The server
        # defaults fields (behavior policies, selectPolicy) and drops those behind a disabled
        # feature gate (behavior tolerance before 1.35), so what we send never reads back equal.
        self._hpa_written: dict[tuple[str, str], tuple[dict, dict]] = {}
        self._pods: dict[tuple[str, str], tuple[int, int]] = {}
        self._retired: set[tuple[str, str]] = set()  # PAs this process scaled to zero (once each, then on pods seen)

    async def apply(self, plans: list[Plan], catalog: Catalog, products: Mapping[str, set[str]], now: float) -> ActuationReport:
        report = ActuationReport()
        gate = asyncio.Semaphore(self.settings.concurrency)

        async def one(plan: Plan) -> None:
            async with gate:
                try:
                    await self._apply_one(plan, catalog, products, now, report)
                except ApiError as exc:
                    report.failures.append(f"{plan.service.key}: {exc}")
                    log.warning("actuating %s failed: %s", plan.service.key, exc)
                except Exception as exc:  # a bug on one ISVC's plan must not leave the others unactuated
                    report.failures.append(f"{plan.service.key}: {exc.__class__.__name__}: {exc}")
                    log.exception("actuating %s failed", plan.service.key)

        await asyncio.gather(*(one(p) for p in plans))
        await self.reconcile_revisions(plans, catalog, now, report)
        return report

    async def reconcile_revisions(
        self, plans: list[Plan], catalog: Catalog, now: float, report: ActuationReport | None = None
    ) -> ActuationReport:
        """Every PodAutoscaler of our class, whoever's it is (knative.py says how each is scaled).
        Run by every cycle, and on PA, SKS, HPA and pod events in between (the controller's reactor)."""
        report = report or ActuationReport()
        gate = asyncio.Semaphore(self.settings.concurrency)
        deciding = {(p.service.namespace, p.service.name): p for p in plans if not p.service.raw_deployment}
        self._pods = self._count_pods()
        with_revisions = set()

        async def one(pa: dict) -> None:
            meta = pa["metadata"]
            plan = deciding.get((meta["namespace"], knative.isvc_of(pa) or "")) if knative.is_predictor(pa) else None
            if plan is not None:
                with_revisions.add(plan.service.key)
            async with gate:
                try:
                    await self._reconcile_pa(pa, plan, catalog, now, report)
                except ApiError as exc:
                    report.failures.append(f"PodAutoscaler {meta['namespace']}/{meta['name']}: {exc}")
                    log.warning("reconciling PodAutoscaler %s/%s failed: %s", meta["namespace"], meta["name"], exc)

        pas = [pa for pa in list(self.informers["pas"].objects.values()) if knative.is_ours(pa)]
        self._retired &= {(pa["metadata"]["namespace"], pa["metadata"]["name"]) for pa in pas}
        await asyncio.gather(*(one(pa) for pa in pas))
        for plan in deciding.values():  # no revision yet: the decision still reaches the adapter
            if plan.decision is not None and plan.service.key not in with_revisions:
                report.decisions.append(
                    decision_message(plan, catalog.classes[plan.service.service_class].targets[plan.service.model])
                )
        return report

    def _count_pods(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(ready, all) pods per (namespace, revision), counted once per pass."""
        counts: dict[tuple[str, str], tuple[int, int]] = {}
        for pod in self.informers["pods"].objects.values():
            meta = pod["metadata"]
            revision = (meta.get("labels") or {}).get(REVISION_LABEL)
            if revision:
                key = (meta.get("namespace", ""), revision)
                ready, total = counts.get(key, (0, 0))
                counts[key] = (ready + knative.is_ready_pod(pod), total + 1)
        return counts

    async def _apply_one(self, plan, catalog, products, now, report: ActuationReport) -> None:
        service = plan.service
        isvc = self.informers["isvcs"].objects.get((service.namespace, service.name))
        if isvc is None:
            return
        if plan.decision is None:
            return await self._condition(isvc, condition(plan), now, report)
        accelerator = catalog.accelerators[plan.decision.accelerator]
        gpus = catalog.profiles[(service.model, accelerator.name)].acc_count * accelerator.multiplicity
        patch = spec_patch(isvc, plan, products.get(accelerator.type, {accelerator.type}), gpus)
        written = None
        if patch is not None:
            # the spec first: a crash before the decision is stored makes the next cycle send the
            # same spec again, which KServe takes as no change (no second rollout)
            written = await with_retries(
                lambda: self.kube.patch(INFERENCE_SERVICES, service.namespace, service.name, patch), f"roll out {service.key}"
            )
            report.writes += 1
        if plan.records_decision:
            await self.decisions.write(isvc["metadata"], plan.decision.to_json())
            report.writes += 1
        # the message (predicted latencies) is rewritten with the decision, not for every small move
        await self._condition(written or isvc, condition(plan), now, report, message_too=plan.records_decision)
        slo = catalog.classes[service.service_class].targets[service.model]
        bounds = (service.min_replicas, service.max_replicas)
        if service.raw_deployment and scaled_by_keda(isvc):  # KEDA's HPA scales on our figures
            await self._retire_hpa(service.namespace, f"{service.name}-optimizer", report)
            report.decisions.append(decision_message(plan, slo))
            return
        if service.raw_deployment:
            target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": predictor_deployment(isvc)}
            wanted = hpa(
                f"{service.name}-optimizer",
                service.namespace,
                target,
                {"isvc": service.name},
                bounds,
                isvc,
                self.settings.hpa_tolerance,
                plan.scale_down_s,
            )
            await self._ensure_hpa(wanted, report)
            report.decisions.append(decision_message(plan, slo))

    async def _condition(self, isvc: dict, wanted: dict, now: float, report: ActuationReport, message_too: bool = True) -> None:
        written = await write_condition(self.kube, isvc, wanted, now, message_too)
        report.writes += written  # not `+= await ...`: that reads the count before the await and loses others' updates

    async def _ensure_hpa(self, wanted: dict, report: ActuationReport) -> None:
        meta = wanted["metadata"]
        key = (meta["namespace"], meta["name"])
        current = self.informers["hpas"].objects.get(key)
        if current is not None and self._hpa_written.get(key) == (wanted["spec"], current.get("spec")):
            return  # what the server made of our last write, untouched since
        if not hpa_differs(wanted, current):
            return

        async def write() -> dict:
            try:
                if current is None:
                    return await self.kube.create(HPAS, meta["namespace"], wanted)
            except ApiError as exc:
                if exc.status != 409:  # created meanwhile (our own earlier attempt): update it instead
                    raise
            return await self.kube.patch(HPAS, meta["namespace"], meta["name"], {"spec": wanted["spec"]})

        stored = await with_retries(write, f"HPA {meta['namespace']}/{meta['name']}")
        self._hpa_written[key] = (wanted["spec"], stored.get("spec"))
        report.writes += 1

    async def _retire_hpa(self, namespace: str, name: str, report: ActuationReport) -> bool:
        """Delete our HPA `name` if there is one; returns whether there was."""
        if (namespace, name) not in self.informers["hpas"].objects:
            return False
        try:
            await with_retries(lambda: self.kube.delete(HPAS, namespace, name), f"retire HPA {name}")
        except ApiError as exc:
            if exc.status != 404:
                raise
        self._hpa_written.pop((namespace, name), None)
        report.writes += 1
        return True

    async def _reconcile_pa(self, pa: dict, plan: Plan | None, catalog: Catalog, now: float, report: ActuationReport) -> None:
        meta = pa["metadata"]
        namespace, name, revision = meta["namespace"], meta["name"], knative.revision_of(pa)
        sks = self.informers["sks"].objects.get((namespace, name))
        wanted_sks = knative.serverless_service(pa)
        if sks is None:
            try:
                await with_retries(lambda: self.kube.create(SERVERLESS_SERVICES, namespace, wanted_sks), f"SKS {name}")
                report.writes += 1
            except ApiError as exc:
                if exc.status != 409:
                    raise
        elif knative.sks_drifted(sks, wanted_sks):
            await with_retries(
                lambda: self.kube.patch(SERVERLESS_SERVICES, namespace, name, {"spec": wanted_sks["spec"]}), f"SKS {name}"
            )
            report.writes += 1
        target = (pa.get("spec") or {}).get("scaleTargetRef") or {}
        ready, pods = self._pods.get((namespace, revision), (0, 0))
        decision = plan.decision if plan is not None else None
        if not knative.is_reachable(pa):  # no route sends it traffic: retired, as Knative scales it to zero
            desired = 0
            retired_before = (namespace, name) in self._retired
            if await self._retire_hpa(namespace, name, report) or pods or not retired_before:
                await self._scale(namespace, target, 0, report)
                self._retired.add((namespace, name))
        elif decision is not None:
            # at least one: our class keeps no activator in the path to wake a revision at zero
            desired = max(decision.replicas, 1)
            service = plan.service
            bounds = (service.min_replicas, service.max_replicas)
            selector = {"isvc": service.name, "revision": revision}
            wanted = hpa(name, namespace, target, selector, bounds, pa, self.settings.hpa_tolerance, plan.scale_down_s)
            await self._ensure_hpa(wanted, report)
            if pods == 0:  # at zero (retired before, or made so): an HPA never scales up from there
                await self._scale_up_to(namespace, target, 1, report)
            slo = catalog.classes[service.service_class].targets[service.model]
            report.decisions.append(decision_message(plan, slo, revision=revision, replicas=desired))
        else:
            # not under a decision (a transformer or explainer, an ISVC not decided yet or not
            # managed, that still has our class): at least its floor, never scaled down by us
            floor = knative.initial_scale_target(pa) or 1
            desired = max(floor, pods)
            if pods < floor and (namespace, name) not in self.informers["hpas"].objects:
                await self._scale_up_to(namespace, target, floor, report)
        status = knative.pa_status(pa, desired, ready, sks)
        if knative.status_differs(pa, status):
            status = knative.with_transition_times(pa, status, rfc3339(now))
            await with_retries(
                lambda: self.kube.patch(POD_AUTOSCALERS, namespace, name, {"status": status}, subresource="status"),
                f"PA status {name}",
            )
            report.writes += 1

    async def _scale_up_to(self, namespace: str, target: dict, floor: int, report: ActuationReport) -> None:
        """At least `floor` replicas; more are left as they are (pods not seen yet, someone's choice)."""
        if target.get("kind") != "Deployment" or not target.get("name"):
            return
        try:
            scale = await self.kube.request("GET", DEPLOYMENTS.path(namespace, target["name"], "scale"))
        except ApiError as exc:
            if exc.status == 404:  # not made yet (Knative makes the PA first): nothing to scale
                return
            raise
        if ((scale.get("spec") or {}).get("replicas") or 0) < floor:
            await self._scale(namespace, target, floor, report)

    async def _scale(self, namespace: str, target: dict, replicas: int, report: ActuationReport) -> None:
        if target.get("kind") != "Deployment" or not target.get("name"):
            return
        body = {"spec": {"replicas": replicas}}
        await with_retries(
            lambda: self.kube.patch(DEPLOYMENTS, namespace, target["name"], body, subresource="scale"),
            f"scale {namespace}/{target['name']} to {replicas}",
        )
        report.writes += 1
