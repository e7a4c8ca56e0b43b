"""Issue 13, points 3 and 4 on a real kube-apiserver with Knative's v1.23.0 and KServe's v0.20.0
CRDs: our PodAutoscaler class's status and ServerlessService pass the real schemas, and the PA is
Ready only once the SKS is Ready and max(min-scale, initial-scale) pods (made by the real
ReplicaSet controller, run by kwok) are (Knative's kpa.activeThreshold); an unreachable revision
is retired to zero; ScaleTargetInitialized is never reset, while Active and Ready go when the
pods do.

Knative itself does not run here: the test plays its part by writing the PA, the revision's
Deployment and the SKS's status, as Knative's reconcilers would.
"""

from __future__ import annotations

import json
import time

from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.decision_stream import DecisionHub
from autoscaler.kserve import DEPLOYMENT_MODE, INITIAL_SCALE, ISVC_LABEL, MIN_SCALE, REVISION_LABEL
from autoscaler.kube import Kube

from ..cluster_objects import isvc, pod_autoscaler
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import NAMESPACE, kubectl_json, opt_in_namespace, problems_in
from .test_controller_rbac import settled

ISVC_NAMESPACE = "e2e-pa-class"
REVISION = "chat-predictor-00001"


def revision_deployment(
    replicas: int, namespace: str = ISVC_NAMESPACE, revision: str = REVISION, isvc_name: str = "chat"
) -> dict:
    """A revision's Deployment as Knative makes it (the PA's scaleTargetRef): its pods, made by the
    real ReplicaSet controller and marked Ready by kwok, carry the revision's label."""
    labels = {REVISION_LABEL: revision, ISVC_LABEL: isvc_name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{revision}-deployment", "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "containers": [
                        {"name": "kserve-container", "image": "vllm/vllm-openai", "resources": {"requests": {"cpu": "1"}}}
                    ],
                },
            },
        },
    }


def conditions(plane) -> dict[str, str]:
    pa = kubectl_json(plane, "get", "podautoscaler", REVISION, f"--namespace={ISVC_NAMESPACE}")
    return {c["type"]: c["status"] for c in (pa.get("status") or {}).get("conditions") or []}


def until(predicate, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


async def test_our_pa_is_ready_only_when_the_sks_and_enough_pods_are_and_unreachable_is_retired(deployed, gpu_nodes):
    plane = deployed
    opt_in_namespace(plane, ISVC_NAMESPACE)
    managed = isvc("chat", "llama-3-8b", raw=False, namespace=ISVC_NAMESPACE)
    managed["metadata"]["annotations"][DEPLOYMENT_MODE] = "Knative"
    plane.kubectl("apply", "--filename=-", input=json.dumps(managed))
    pa = pod_autoscaler("chat", REVISION, namespace=ISVC_NAMESPACE)
    pa["metadata"]["annotations"] |= {MIN_SCALE: "2", INITIAL_SCALE: "3"}  # the larger counts
    pa["spec"]["reachability"] = "Reachable"
    del pa["metadata"]["generation"]
    plane.kubectl("apply", "--filename=-", input=json.dumps(pa))
    plane.kubectl("apply", "--filename=-", input=json.dumps(revision_deployment(1)))
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    controller = Controller(
        kube, StandInCollector({(ISVC_NAMESPACE, "chat"): observed(8.0)}), DecisionHub(), ControllerSettings(namespace=NAMESPACE)
    )
    try:
        await controller.start(sync_timeout_s=30)
        report = await controller.cycle()
        assert not problems_in(ISVC_NAMESPACE, report.failures), report.as_dict()
        sks = kubectl_json(plane, "get", "serverlessservice", REVISION, f"--namespace={ISVC_NAMESPACE}")
        assert sks["spec"]["mode"] == "Serve" and sks["spec"]["objectRef"]["name"] == f"{REVISION}-deployment"
        assert conditions(plane)["Ready"] != "True"

        # Knative's SKS reconciler: the services exist
        status = {
            "status": {
                "serviceName": REVISION,
                "privateServiceName": f"{REVISION}-private",
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-29T00:00:00Z"}],
            }
        }
        plane.kubectl(
            "patch", "serverlessservice", REVISION, f"--namespace={ISVC_NAMESPACE}", "--subresource=status", "--type=merge",
            f"--patch={json.dumps(status)}",
        )  # fmt: skip
        until(lambda: len(ready_pods(plane)) == 1, "one Ready pod from kwok")
        await settled(controller, lambda: controller.informers["sks"].objects[(ISVC_NAMESPACE, REVISION)].get("status"))
        await controller.cycle()
        stored = kubectl_json(plane, "get", "podautoscaler", REVISION, f"--namespace={ISVC_NAMESPACE}")["status"]
        assert (stored["serviceName"], stored["metricsServiceName"], stored["actualScale"]) == (
            REVISION,
            f"{REVISION}-private",
            1,
        )
        assert conditions(plane)["ScaleTargetInitialized"] != "True" and conditions(plane)["Ready"] != "True"  # 1 < 3

        # the HPA on our figure would scale it; here the test does: to min-scale's 2, still below
        # initial-scale's 3, then to 3
        for replicas in (2, 3):
            plane.kubectl(
                "scale", "deployment", f"{REVISION}-deployment", f"--replicas={replicas}", f"--namespace={ISVC_NAMESPACE}"
            )
            until(lambda n=replicas: len(ready_pods(plane)) == n, f"{replicas} Ready pods from kwok")
            await settled(controller, lambda n=replicas: seen_ready(controller) == n)
            await controller.cycle()
            if replicas == 2:
                assert conditions(plane)["ScaleTargetInitialized"] != "True" and conditions(plane)["Ready"] != "True"
        assert conditions(plane) == {"Active": "True", "SKSReady": "True", "ScaleTargetInitialized": "True", "Ready": "True"}

        plane.kubectl(
            "patch", "podautoscaler", REVISION, f"--namespace={ISVC_NAMESPACE}", "--type=merge",
            '--patch={"spec": {"reachability": "Unreachable"}}',
        )  # fmt: skip
        await settled(
            controller,
            lambda: controller.informers["pas"].objects[(ISVC_NAMESPACE, REVISION)]["spec"].get("reachability") == "Unreachable",
        )
        await controller.cycle()
        deployment = kubectl_json(plane, "get", "deployment", f"{REVISION}-deployment", f"--namespace={ISVC_NAMESPACE}")
        assert deployment["spec"]["replicas"] == 0
        assert conditions(plane)["ScaleTargetInitialized"] == "True"  # never reset
        until(lambda: not ready_pods(plane), "kwok to finish the pods' deletion")
        await settled(controller, lambda: seen_ready(controller) == 0)
        await controller.cycle()
        after = conditions(plane)
        assert after["ScaleTargetInitialized"] == "True" and after["Active"] != "True" and after["Ready"] != "True"
    finally:
        await controller.stop()
        await kube.close()
        # gone before the next test, whose cycles would otherwise see (and count) this one's ISVCs
        plane.kubectl("delete", "namespace", ISVC_NAMESPACE, "--timeout=120s", check=False)


def is_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def seen_ready(controller) -> int:
    """The revision's Ready pods in the controller's watch cache."""
    pods = controller.informers["pods"].objects.values()
    return sum(1 for p in pods if is_ready(p) and p["metadata"]["namespace"] == ISVC_NAMESPACE)


def ready_pods(plane) -> list[dict]:
    pods = kubectl_json(plane, "get", "pods", f"--namespace={ISVC_NAMESPACE}", f"--selector={REVISION_LABEL}={REVISION}")["items"]
    return [p for p in pods if is_ready(p)]
