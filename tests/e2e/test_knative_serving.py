"""A Knative-mode ISVC through our PodAutoscaler class, with the real KServe manager (v0.20.0)
and Knative Serving controller (knative.dev/serving v0.50.0 = knative-v1.23), both built by
`hack/control-plane/build.sh knative kserve`; Knative's webhook admits every Knative object.

What the emulator cannot show: KServe's own reconciler turns the ISVC our webhook defaulted into
a Knative Service (which of its annotations reach the revision template, whether our autoscaler
class survives); Knative's revision reconciler makes the PodAutoscaler, Deployment and pods; its
ServerlessService reconciler answers the SKS we create; and its revision reconciler reads the PA
status we write, so whether our status satisfies Knative's readiness contract is decided by
Knative's code, not ours.
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
COLLECTOR = StandInCollector({(KN_NAMESPACE, "chat"): observed(2.0)})


@pytest.fixture(scope="module")
def knative(deployed, webhook, gpu_nodes):
    try:
        knative_serving, kserve = build("knative"), build("kserve")
    except ControlPlaneUnavailable as exc:
        pytest.fail(f"Knative Serving or KServe is unavailable: {exc}", pytrace=False)
    deployed.start_knative_serving(knative_serving)
    deployed.start_kserve(kserve)
    deployed.kubectl("apply", "--filename=-", input=json.dumps(RUNTIME))
    opt_in_namespace(deployed, KN_NAMESPACE)  # the controller writes there under config/'s RBAC
    yield deployed
    deployed.kubectl("delete", "namespace", KN_NAMESPACE, "--wait=false", check=False)


# what KServe needs to make a predictor for a huggingface model: a runtime that supports it
RUNTIME = {
    "apiVersion": "serving.kserve.io/v1alpha1",
    "kind": "ClusterServingRuntime",
    "metadata": {"name": "vllm"},
    "spec": {
        "supportedModelFormats": [{"name": "huggingface", "version": "1", "autoSelect": True}],
        "containers": [
            {
                "name": "kserve-container",
                "image": "registry.example/vllm@sha256:" + "0" * 64,  # a digest: nothing to resolve
                "resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "1", "memory": "4Gi"}},
            }
        ],
    },
}


def condition(obj: dict, kind: str) -> str:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), "")


def latest_revision(plane) -> str:
    configuration = kubectl_json(plane, "get", "configuration", "chat-predictor", f"--namespace={KN_NAMESPACE}")
    return configuration.get("status", {}).get("latestCreatedRevisionName", "")


def get(plane, kind: str, name: str) -> dict:
    found = plane.kubectl("get", kind, name, f"--namespace={KN_NAMESPACE}", "--ignore-not-found", "--output=json")
    return json.loads(found.stdout) if found.stdout.strip() else {}


def test_kserve_makes_a_knative_service_that_keeps_our_autoscaler_class(knative):
    plane = knative
    plane.kubectl("create", "--filename=-", input=json.dumps(isvc("chat", "llama-3-8b", raw=False, namespace=KN_NAMESPACE)))
    stored = kubectl_json(plane, "get", "inferenceservice", "chat", f"--namespace={KN_NAMESPACE}")
    assert stored["metadata"]["annotations"][ann.KNATIVE_CLASS] == ann.OUR_KNATIVE_CLASS  # our webhook
    deadline = time.monotonic() + 60
    while not (pa := get(plane, "podautoscaler", "chat-predictor-00001")):
        assert time.monotonic() < deadline, "KServe and Knative made no PodAutoscaler for the ISVC"
        time.sleep(0.5)
    template = get(plane, "ksvc", "chat-predictor")["spec"]["template"]["metadata"]
    assert template["annotations"][ann.KNATIVE_CLASS] == ann.OUR_KNATIVE_CLASS, template  # KServe kept our class
    assert pa["metadata"]["annotations"][ann.KNATIVE_CLASS] == ann.OUR_KNATIVE_CLASS  # Knative's PA is ours to serve
    assert pa["metadata"]["labels"][ISVC_LABEL] == "chat"


async def test_a_decision_does_not_roll_out_a_new_revision(knative):
    """KServe copies the ISVC's annotations into the revision template: the decision is kept in our
    namespace (issue 13.1), so deciding makes no second Revision."""
    kube = await Kube.connect(str(knative.service_account_kubeconfig(NAMESPACE, "controller")))
    controller = Controller(kube, COLLECTOR, DecisionHub(), ControllerSettings(namespace=NAMESPACE))
    try:
        await controller.start(sync_timeout_s=30)
        assert not problems_in(KN_NAMESPACE, (await controller.cycle()).failures)
        await asyncio.sleep(5)  # KServe and Knative react
        assert latest_revision(knative) == "chat-predictor-00001"
    finally:
        await controller.stop()
        await kube.close()


async def test_our_pa_status_makes_knative_take_the_revision_for_ready(knative):
    plane = knative
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    controller = Controller(kube, COLLECTOR, DecisionHub(), ControllerSettings(namespace=NAMESPACE))
    try:
        await controller.start(sync_timeout_s=30)
        gangs = GangAdmission(kube, controller.informers["pods"], controller.informers["nodes"], NAMESPACE)
        deadline = time.monotonic() + 120
        while True:  # until the latest revision's PA, of our class, is Ready with its pods
            report = await controller.cycle()
            assert not problems_in(KN_NAMESPACE, report.failures), report.failures
            await gangs.reconcile()
            revision = latest_revision(plane)
            pa = get(plane, "podautoscaler", revision) if revision else {}
            if pa and condition(pa, "Ready") == "True" and pa["status"].get("actualScale", 0) >= 1:
                break
            if time.monotonic() > deadline:
                sks = plane.kubectl("get", "serverlessservice", "--output=yaml", f"--namespace={KN_NAMESPACE}").stdout
                pytest.fail(f"our PA status of {revision} never turned Ready: {pa.get('status')}; SKS: {sks[-1500:]}")
            await asyncio.sleep(1)
        # we made its HPA and SKS, Knative reconciled the SKS, our gang admission let its pods run
        hpa = kubectl_json(plane, "get", "hpa", revision, f"--namespace={KN_NAMESPACE}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"{revision}-deployment"
        sks = kubectl_json(plane, "get", "serverlessservice", revision, f"--namespace={KN_NAMESPACE}")
        assert sks["spec"]["mode"] == "Serve" and sks["status"].get("serviceName")
        selector = f"--selector=serving.knative.dev/revision={revision}"
        pods = kubectl_json(plane, "get", "pods", f"--namespace={KN_NAMESPACE}", selector)
        assert pods["items"] and all(p["metadata"]["labels"][ann.POD_GROUP] == revision for p in pods["items"])

        # Knative's revision reconciler judges our PA status
        deadline = time.monotonic() + 60
        while condition(rev := get(plane, "revision", revision), "Ready") != "True":
            assert time.monotonic() < deadline, f"Knative never took {revision} for Ready: {rev.get('status')}"
            await controller.cycle()
            await asyncio.sleep(1)
    finally:
        await controller.stop()
        await kube.close()


async def test_an_sks_someone_changed_is_set_back_through_knatives_webhook_and_then_left_alone(knative):
    """Knative's webhook runs (control_plane._start_knative_webhook) and admits our SKS writes; it
    drops a 0 numActivators, which we therefore no longer write (else: a patch every cycle)."""
    plane = knative
    revision = latest_revision(plane)
    plane.kubectl(
        "patch",
        "serverlessservice",
        revision,
        f"--namespace={KN_NAMESPACE}",
        "--type=merge",
        "--patch",
        '{"spec":{"mode":"Proxy"}}',
    )
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    controller = Controller(kube, COLLECTOR, DecisionHub(), ControllerSettings(namespace=NAMESPACE))
    try:
        await controller.start(sync_timeout_s=30)
        assert not problems_in(KN_NAMESPACE, (await controller.cycle()).failures)
        restored = get(plane, "serverlessservice", revision)
        assert restored["spec"]["mode"] == "Serve" and "numActivators" not in restored["spec"]
        await asyncio.sleep(2)  # our watch sees our own write
        assert not problems_in(KN_NAMESPACE, (await controller.cycle()).failures)
        # no spec write (Knative's SKS reconciler may still write its status meanwhile)
        assert get(plane, "serverlessservice", revision)["metadata"]["generation"] == restored["metadata"]["generation"]
    finally:
        await controller.stop()
        await kube.close()
