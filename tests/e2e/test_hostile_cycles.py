"""One ISVC's bad data stops no other ISVC's cycle on the real kube-apiserver, the controller as
config/'s ServiceAccount (moved here from tests/test_hostile_input.py, which keeps the cases that
need no API server): hand-edited decision ConfigMaps, broken Prometheus samples and a bug in one
ISVC's actuation are each isolated to their ISVC, and the others' HPAs and decisions are written.

Each test has a namespace of its own (tests/e2e/isvc_namespace.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from autoscaler.controller.catalog import cluster_data
from autoscaler.controller.collector import CollectorSettings, observations
from autoscaler.controller.decision_store import DECISION_KEY, SELECTOR, UID_LABEL, configmap
from autoscaler.decision_metrics import decision_problem, exposition
from autoscaler.policy.decisions import LastDecision
from autoscaler.policy.planner import Plan

from ..cluster_objects import isvc
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from ..test_hostile_input import BAD_VALUES, BROKEN_SAMPLES, GOOD, annotation, results
from .conftest import NAMESPACE, kubectl_json
from .isvc_namespace import CHAT, CODE, named, stop
from .test_controller_rbac import settled


DATA = "inference-autoscaler-data"  # config/data's ConfigMap, which `deployed` applied


def sane_decision(stored: dict | None) -> bool:
    return stored is not None and LastDecision.from_json(json.dumps(stored)).problem() is None


@named("e2e-bad-decisions")
async def test_bad_stored_decisions_never_stop_the_cycle_nor_reach_the_stream_metrics_or_hpas(namespace):
    """Decision ConfigMaps edited by hand (as the admin, in our namespace) with every kind of bad
    value: each is refused with its ISVC, the sound one is kept, and every ISVC gets its HPA."""
    texts = {"chat": GOOD.to_json()} | {f"bad{i}": annotation(field, value) for i, (field, value) in enumerate(BAD_VALUES)}
    namespace.apply([isvc(name, CHAT if name == "chat" else CODE, namespace=namespace.name) for name in texts])
    metas = namespace.isvc_metadata()
    namespace.apply([configmap(NAMESPACE, metas[name], text) for name, text in texts.items()])
    collector = StandInCollector()
    collector.down = True  # no load data: the remembered decision kept, or (none sound) the minimum
    controller = await namespace.controller(collector)
    try:
        report = await controller.cycle()
        assert not namespace.mine(report), report.as_dict()
        published = namespace.published(controller)
        # chat as remembered; the others, never decided as far as anyone can trust, at their minimum
        assert {d.isvc: d.desired_replicas for d in published} == {name: 3 if name == "chat" else 1 for name in texts}
        samples = [line.rsplit(" ", 1) for line in exposition(published).splitlines() if not line.startswith("#")]
        assert all(math.isfinite(float(v)) and (float(v) >= 0 or "headroom" in name) for name, v in samples)

        collector.down = False
        collector.observations = {(namespace.name, name): observed(1.0) for name in texts}
        report = await controller.cycle()
        assert not report.error and not namespace.mine(report), report.as_dict()
        assert all(decision_problem(d) is None for d in namespace.published(controller))
        hpas = kubectl_json(namespace.plane, "get", "hpa", f"--namespace={namespace.name}")["items"]
        assert {h["metadata"]["name"] for h in hpas} == {f"{name}-optimizer" for name in texts}
        kept = kubectl_json(namespace.plane, "get", "configmaps", f"--namespace={NAMESPACE}", f"--selector={SELECTOR}")["items"]
        decided = {c["metadata"]["labels"][UID_LABEL]: json.loads(c["data"][DECISION_KEY]) for c in kept}
        for name in texts:  # decided afresh and written, each on its own
            assert sane_decision(decided.get(metas[name]["uid"])), (name, decided.get(metas[name]["uid"]))
    finally:
        await stop(controller)


@named("e2e-broken-samples")
async def test_one_isvcs_broken_prometheus_samples_never_stop_the_others_cycle(namespace):
    """Each broken sample of tests/test_hostile_input.py, through the collector's parsing, in a
    real cycle: the sound ISVC is decided from its own samples and its HPA written."""
    namespace.apply([isvc(name, CHAT, namespace=namespace.name) for name in ("chat", "code")])
    collector = StandInCollector()
    controller = await namespace.controller(collector)
    try:
        for bad in BROKEN_SAMPLES:
            collector.observations = observations(results(bad, namespace.name), CollectorSettings())
            report = await controller.cycle()
            assert not report.error and not namespace.mine(report), (bad, report.as_dict())
            assert namespace.exists("hpa", "chat-optimizer")
            chat = namespace.decision("chat")
            assert sane_decision(chat) and chat["arrival_rate"] == pytest.approx(10.0), (bad, chat)
            assert all(decision_problem(d) is None for d in namespace.published(controller)), bad
    finally:
        await stop(controller)


@named("e2e-actuation-bug")
async def test_one_isvcs_actuation_bug_leaves_the_others_actuated(namespace):
    """A plan the actuator fails on (an accelerator it has no products for) for one ISVC: the
    other's HPA and decision are written on the server, the failure names only the one."""
    namespace.apply([isvc("chat", CHAT, namespace=namespace.name), isvc("code", CODE, namespace=namespace.name)])
    controller = await namespace.controller(StandInCollector())
    try:
        # no cycle first: the HPA and decision below are this apply's own writes
        catalog = cluster_data(kubectl_json(namespace.plane, "get", "configmap", DATA, f"--namespace={NAMESPACE}"), DATA).catalog
        services, _ = controller.services.read(controller.informers["isvcs"].objects.values(), catalog)
        mine = [s for s in services if s.namespace == namespace.name]
        plans = [Plan(s, replace(GOOD, accelerator="NOPE") if s.name == "code" else GOOD) for s in mine]
        report = await controller.actuator.apply(plans, catalog, {}, 1000.0)
        assert [d.isvc for d in report.decisions] == ["chat"]
        assert len(report.failures) == 1 and f"{namespace.name}/code" in report.failures[0], report.failures
        assert namespace.exists("hpa", "chat-optimizer") and namespace.decision("chat")["replicas"] == GOOD.replicas
        assert not namespace.exists("hpa", "code-optimizer") and namespace.decision("code") is None
        await settled(controller, lambda: (namespace.name, "chat-optimizer") in controller.informers["hpas"].objects)
    finally:
        await stop(controller)
