"""A Knative-mode ISVC through our PodAutoscaler class, with the real Knative Serving controller.

What the emulator cannot show: the PodAutoscaler, Deployment and pods are made by Knative's own
revision reconciler (knative.dev/serving v0.50.0 = knative-v1.23, built by
`hack/control-plane/build.sh knative`), from a Knative Service made as KServe makes it for the
ISVC (KServe's manager builds, but is not run: README); its ServerlessService reconciler answers
the SKS we create; and its revision reconciler reads the PA status we write, so whether our
status satisfies Knative's readiness contract is decided by Knative's code, not ours.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from autoscaler import annotations as ann
from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.decision_stream import DecisionHub
from autoscaler.gang.admission import GangAdmission
from autoscaler.kserve import ISVC_LABEL
from autoscaler.kube import Kube

from ..cluster_objects import isvc
from ..control_plane import ControlPlaneUnavailable, build
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import NAMESPACE, kubectl_json, opt_in_namespace, problems_in

KN_NAMESPACE = "e2e-knative"


@pytest.fixture(scope="module")
def knative(deployed, webhook, gpu_nodes):
    try:
        directory = build("knative")
    except ControlPlaneUnavailable as exc:
        pytest.fail(f"the Knative Serving controller is unavailable: {exc}", pytrace=False)
    deployed.start_knative_serving(directory)
    opt_in_namespace(deployed, KN_NAMESPACE)  # the controller writes there under config/'s RBAC
    yield deployed
    deployed.kubectl("delete", "namespace", KN_NAMESPACE, "--wait=false", check=False)


def knative_service(isvc_obj: dict) -> dict:
    """The predictor's Knative Service as KServe makes it: the ISVC's annotations on the revision
    template (KServe copies those not on its disallow list), the ISVC label on it."""
    name = isvc_obj["metadata"]["name"]
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-predictor", "namespace": KN_NAMESPACE, "labels": {ISVC_LABEL: name}},
        "spec": {
            "template": {
                "metadata": {
                    "labels": {ISVC_LABEL: name, "component": "predictor"},
                    "annotations": isvc_obj["metadata"]["annotations"],
                },
                "spec": {
                    "containers": [
                        {
                            "name": "kserve-container",
                            "image": "registry.example/vllm@sha256:" + "0" * 64,  # a digest: nothing to resolve
                            "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "1", "memory": "4Gi"}},
                        }
                    ]
                },
            }
        },
    }


def condition(obj: dict, kind: str) -> str:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), "")


async def test_a_knative_isvc_runs_through_our_podautoscaler_class(knative):
    plane = knative
    plane.kubectl("create", "--filename=-", input=json.dumps(isvc("chat", "llama-3-8b", raw=False, namespace=KN_NAMESPACE)))
    stored = kubectl_json(plane, "get", "inferenceservice", "chat", f"--namespace={KN_NAMESPACE}")
    assert stored["metadata"]["annotations"][ann.KNATIVE_CLASS] == ann.OUR_KNATIVE_CLASS  # our webhook
    plane.kubectl("create", "--filename=-", input=json.dumps(knative_service(stored)))

    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    controller = Controller(
        kube, StandInCollector({(KN_NAMESPACE, "chat"): observed(2.0)}), DecisionHub(), ControllerSettings(namespace=NAMESPACE)
    )
    try:
        await controller.start(sync_timeout_s=30)
        gangs = GangAdmission(kube, controller.informers["pods"], controller.informers["nodes"], NAMESPACE)
        revision = "chat-predictor-00001"
        deadline = time.monotonic() + 90
        while True:
            report = await controller.cycle()
            assert not problems_in(KN_NAMESPACE, report.failures), report.failures
            await gangs.reconcile()
            found = plane.kubectl(
                "get", "podautoscaler", revision, f"--namespace={KN_NAMESPACE}", "--ignore-not-found", "-o", "json"
            )
            pa = json.loads(found.stdout) if found.stdout.strip() else {}
            if pa and condition(pa, "Ready") == "True" and pa["status"].get("actualScale", 0) >= 1:
                break
            if time.monotonic() > deadline:
                sks = plane.kubectl("get", "serverlessservice", "--output=yaml", f"--namespace={KN_NAMESPACE}").stdout
                pytest.fail(f"our PA status never turned Ready: {pa.get('status')}; SKS: {sks[-1500:]}")
            await asyncio.sleep(1)
        # Knative made the PA of our class; we made its HPA and SKS, Knative reconciled the SKS
        assert pa["metadata"]["annotations"][ann.KNATIVE_CLASS] == ann.OUR_KNATIVE_CLASS
        hpa = kubectl_json(plane, "get", "hpa", revision, f"--namespace={KN_NAMESPACE}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"{revision}-deployment"
        sks = kubectl_json(plane, "get", "serverlessservice", revision, f"--namespace={KN_NAMESPACE}")
        assert sks["spec"]["mode"] == "Serve" and sks["status"].get("serviceName")
        pods = kubectl_json(
            plane, "get", "pods", f"--namespace={KN_NAMESPACE}", f"--selector=serving.knative.dev/revision={revision}"
        )
        assert pods["items"] and all(p["metadata"]["labels"][ann.POD_GROUP] == revision for p in pods["items"])

        # Knative's revision reconciler judges our PA status
        deadline = time.monotonic() + 60
        while (
            condition(rev := kubectl_json(plane, "get", "revision", revision, f"--namespace={KN_NAMESPACE}"), "Ready") != "True"
        ):
            assert time.monotonic() < deadline, f"Knative never took the revision for Ready: {rev.get('status')}"
            await controller.cycle()
            await asyncio.sleep(1)
    finally:
        await controller.stop()
        await kube.close()
