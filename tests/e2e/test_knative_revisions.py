"""Issue 13, point 4 on a real kube-apiserver with Knative's v1.23.0 CRDs: which revisions our
PodAutoscaler class serves, and how fast it follows Knative (moved from the API emulator).

Revisions are retired by their PA's `spec.reachability` (what the routes send traffic to), not by
the ISVC's latest revision. Every PA of our class is served (transformers, ISVCs not decided yet or
no longer opted in); PA, SKS and pod events are followed before the next 30 s cycle; a routed
revision is never taken to zero (our class keeps no activator in the path to wake it). A canary's
previous revision serving beside it: test_controller_cycles.py's
test_knative_revisions_get_hpas_serverless_services_and_status.

Knative itself does not run here: the test plays its part, writing each revision's PA (with the
reachability Knative's revision reconciler sets from the routes) and Deployment, whose pods the
real ReplicaSet controller makes and kwok marks Ready.
"""

from __future__ import annotations

import asyncio
import json

from autoscaler import annotations as ann
from autoscaler.kserve import COMPONENT_LABEL, REVISION_LABEL

from ..cluster_objects import isvc, pod_autoscaler
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import kubectl_json
from .isvc_namespace import CHAT, Namespace, named, stop
from .test_controller_rbac import settled
from .test_knative_class import revision_deployment


def knative_isvc(namespace: Namespace, name: str = "chat", **annotations: str) -> None:
    managed = isvc(name, CHAT, raw=False, namespace=namespace.name)
    managed["metadata"]["annotations"] |= annotations
    namespace.plane.kubectl("apply", "--filename=-", input=json.dumps(managed))


def revision(
    namespace: Namespace, name: str, reachability: str = "Reachable", isvc_name: str = "chat", replicas: int = 2, **labels: str
) -> None:
    """A revision as Knative makes it: its PA of our class and its Deployment."""
    pa = pod_autoscaler(isvc_name, name, namespace=namespace.name)
    del pa["metadata"]["generation"]  # the server's to set
    pa["spec"]["reachability"] = reachability
    pa["metadata"]["labels"] |= labels
    namespace.plane.kubectl("apply", "--filename=-", input=json.dumps(pa))
    deployment = revision_deployment(replicas, namespace.name, name, isvc_name)
    namespace.plane.kubectl("apply", "--filename=-", input=json.dumps(deployment))


def route(namespace: Namespace, name: str, reachability: str) -> None:
    """What Knative's revision reconciler does when the routes' traffic targets change."""
    patch = json.dumps({"spec": {"reachability": reachability}})
    namespace.plane.kubectl("patch", "podautoscaler", name, f"--namespace={namespace.name}", "--type=merge", f"--patch={patch}")


def get(namespace: Namespace, kind: str, name: str) -> dict:
    return kubectl_json(namespace.plane, "get", kind, name, f"--namespace={namespace.name}")


def replicas(namespace: Namespace, name: str) -> int:
    return get(namespace, "deployment", f"{name}-deployment")["spec"]["replicas"]


def seen(controller, informer: str, namespace: Namespace, name: str) -> dict:
    """An object as the controller's watch cache has it ({} before it does)."""
    return controller.informers[informer].objects.get((namespace.name, name)) or {}


def actual_scale(controller, namespace: Namespace, name: str) -> int:
    return (seen(controller, "pas", namespace, name).get("status") or {}).get("actualScale", 0)


def revision_pods(controller, namespace: Namespace, revision_name: str) -> list[dict]:
    """The revision's pods in the controller's watch cache."""
    pods = controller.informers["pods"].objects.values()
    return [p for p in pods if p["metadata"]["namespace"] == namespace.name and revision_of_pod(p) == revision_name]


def revision_of_pod(pod: dict) -> str:
    return (pod["metadata"].get("labels") or {}).get(REVISION_LABEL, "")


@named("e2e-kn-every-pa")
async def test_every_pa_of_our_class_is_served_transformers_and_unmanaged_isvcs_included(namespace):
    knative_isvc(namespace)
    revision(namespace, "chat-predictor-3")
    revision(namespace, "chat-transformer-1", replicas=0, **{COMPONENT_LABEL: "transformer"})
    knative_isvc(namespace, "legacy", **{ann.ENABLED: "false"})
    revision(namespace, "legacy-predictor-1", isvc_name="legacy")
    revision(namespace, "legacy-predictor-0", "Unreachable", isvc_name="legacy")
    controller = await namespace.controller(StandInCollector({(namespace.name, "chat"): observed(8.0)}))
    try:
        report = await controller.cycle()
        assert not namespace.mine(report), report.as_dict()
        for name in ("chat-transformer-1", "legacy-predictor-1", "legacy-predictor-0"):
            assert get(namespace, "serverlessservice", name)["spec"]["mode"] == "Serve"
            assert "conditions" in get(namespace, "podautoscaler", name)["status"]
            # not under a decision: no HPA of ours, held at least at the initial scale, never scaled down
            assert not namespace.exists("hpa", name)
        assert replicas(namespace, "chat-transformer-1") == 1 and replicas(namespace, "legacy-predictor-1") == 2
        assert replicas(namespace, "legacy-predictor-0") == 0
        assert [d.revision for d in namespace.published(controller)] == ["chat-predictor-3"]
    finally:
        await stop(controller)


@named("e2e-kn-routed")
async def test_a_routed_revision_is_never_taken_to_zero(namespace):
    knative_isvc(namespace, **{ann.MIN_REPLICAS: "0"})
    revision(namespace, "chat-predictor-3")
    collector = StandInCollector({(namespace.name, "chat"): observed(0.5)})
    controller = await namespace.controller(collector)
    try:
        await controller.cycle()
        uid = namespace.isvc("chat")["metadata"]["uid"]
        await settled(controller, lambda: controller.decisions.read(uid) is not None)
        collector.observations = {(namespace.name, "chat"): observed(0.0)}
        report = await controller.cycle()
        assert not namespace.mine(report), report.as_dict()
        assert namespace.decision("chat")["replicas"] == 0  # the planner's
        assert [d.desired_replicas for d in namespace.published(controller)] == [1]
        assert get(namespace, "podautoscaler", "chat-predictor-3")["status"]["desiredScale"] == 1
        assert namespace.exists("hpa", "chat-predictor-3") and replicas(namespace, "chat-predictor-3") == 2
    finally:
        await stop(controller)


@named("e2e-kn-events")
async def test_knative_events_are_followed_before_the_next_cycle(namespace):
    knative_isvc(namespace)
    revision(namespace, "chat-predictor-3")
    controller = await namespace.controller(StandInCollector({(namespace.name, "chat"): observed(8.0)}))
    runner = asyncio.create_task(controller.run())  # period 30 s: one cycle now, the next far away
    try:
        await settled(controller, lambda: controller.cycles == 1)
        revision(namespace, "chat-predictor-4")  # a new revision appears
        await settled(controller, lambda: seen(controller, "sks", namespace, "chat-predictor-4"))
        # its pods' events: Ready ones counted in its PA status
        await settled(controller, lambda: actual_scale(controller, namespace, "chat-predictor-4") == 2)
        route(namespace, "chat-predictor-3", "Unreachable")  # the route moved all traffic to 4
        # scaled to zero: the real ReplicaSet controller deletes its pods, kwok finishes that
        await settled(controller, lambda: not revision_pods(controller, namespace, "chat-predictor-3"))
        assert replicas(namespace, "chat-predictor-3") == 0
        # the reactor did it all: no second cycle (its period is 30 s)
        assert controller.cycles == 1 and controller.reactions >= 1
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await stop(controller)


@named("e2e-kn-woken")
async def test_a_revision_routed_again_is_woken_from_zero(namespace):
    """An HPA does not scale a target at zero replicas: the controller takes it to one first."""
    knative_isvc(namespace)
    revision(namespace, "chat-predictor-3", "Unreachable")
    controller = await namespace.controller(StandInCollector({(namespace.name, "chat"): observed(8.0)}))
    try:
        await controller.cycle()
        assert replicas(namespace, "chat-predictor-3") == 0
        # its pods gone (kwok finishes their deletion), as for a revision at zero a while
        await settled(controller, lambda: not revision_pods(controller, namespace, "chat-predictor-3"), 60)
        route(namespace, "chat-predictor-3", "Reachable")  # traffic is routed to it again
        await settled(
            controller, lambda: seen(controller, "pas", namespace, "chat-predictor-3")["spec"]["reachability"] == "Reachable"
        )
        await controller.cycle()
        assert replicas(namespace, "chat-predictor-3") == 1 and namespace.exists("hpa", "chat-predictor-3")
    finally:
        await stop(controller)
