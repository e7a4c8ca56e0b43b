"""Standard-mode ISVCs with the real KServe manager (v0.20.0, `build.sh kserve`), with KEDA's
ScaledObject CRD (`build.sh keda`, from KEDA's module on the Go module proxy) installed before it.

What the other tests only assume: the name of the Deployment KServe makes for a named predictor
(our HPA must target it), and what KServe makes for `autoscalerClass: keda` (a ScaledObject whose
trigger comes from spec.predictor.autoScaling.metrics), which our webhook and controller must leave
to KEDA. KEDA's operator does not run here (it is not built): the ScaledObject's trigger is handed
to our External Scaler as KEDA would send it.
"""

from __future__ import annotations

import json
import time

import grpc
import pytest
import yaml

from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.decision_stream import DecisionHub
from autoscaler.kserve import DEPLOYMENT_MODE, KSERVE_AUTOSCALER_CLASS, STANDARD, predictor_deployment
from autoscaler.kube import Kube
from metrics_adapter.feed import series_of
from metrics_adapter.keda import serve_keda
from metrics_adapter.store import MetricStore

from ..cluster_objects import isvc
from ..control_plane import ROOT, ControlPlaneUnavailable, build
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from ..test_keda_scaler import KEDA, KedaClient
from .conftest import NAMESPACE, kubectl_json, opt_in_namespace, problems_in
from .test_knative_serving import RUNTIME

STD_NAMESPACE = "e2e-standard"


@pytest.fixture(scope="module")
def kserve(deployed, webhook, gpu_nodes):
    try:
        deployed.start_kserve(build("kserve"))
    except ControlPlaneUnavailable as exc:
        pytest.fail(f"KServe or KEDA's CRD is unavailable: {exc}", pytrace=False)
    deployed.kubectl("apply", "--filename=-", input=json.dumps(RUNTIME))
    opt_in_namespace(deployed, STD_NAMESPACE)
    yield deployed
    deployed.kubectl("delete", "namespace", STD_NAMESPACE, "--timeout=120s", check=False)


def made_by_kserve(plane, kind: str, name: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        found = plane.kubectl("get", kind, name, f"--namespace={STD_NAMESPACE}", "--ignore-not-found", "--output=json")
        if found.stdout.strip():
            return json.loads(found.stdout)
        assert time.monotonic() < deadline, f"KServe made no {kind} {name}: {plane.log_tail('kserve-manager')}"
        time.sleep(0.5)


def hpa_targets(plane) -> list[str]:
    """The Deployments the namespace's HPAs scale."""
    found = kubectl_json(plane, "get", "hpa", f"--namespace={STD_NAMESPACE}")["items"]
    return [h["spec"]["scaleTargetRef"]["name"] for h in found]


async def cycled(plane, observations: dict) -> Controller:
    """A controller under its ServiceAccount after one cycle without problems in our namespace."""
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    controller = Controller(kube, StandInCollector(observations), DecisionHub(), ControllerSettings(namespace=NAMESPACE))
    await controller.start(sync_timeout_s=30)
    report = await controller.cycle()
    problems = problems_in(STD_NAMESPACE, report.rejected) + problems_in(STD_NAMESPACE, report.failures)
    if problems:
        await controller.stop()
        await kube.close()
        pytest.fail(f"the cycle had problems: {problems}")
    return controller


async def test_our_hpa_targets_the_deployment_kserve_makes_for_a_named_predictor(kserve):
    plane = kserve
    standard = isvc("std", "llama-3-8b", raw=False, namespace=STD_NAMESPACE)
    standard["metadata"]["annotations"][DEPLOYMENT_MODE] = STANDARD
    standard["spec"]["predictor"]["name"] = "main"
    plane.kubectl("create", "--filename=-", input=json.dumps(standard))
    stored = kubectl_json(plane, "get", "inferenceservice", "std", f"--namespace={STD_NAMESPACE}")
    assert stored["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS] == "external"  # our webhook: KServe makes no HPA
    # KServe's pkg/constants.PredictorServiceName(isvc, spec.predictor.name) names the Deployment
    deployment = made_by_kserve(plane, "deployment", "std-main-predictor")
    assert hpa_targets(plane) == []
    controller = await cycled(plane, {(STD_NAMESPACE, "std"): observed(4.0)})
    try:
        hpa = kubectl_json(plane, "get", "hpa", "std-optimizer", f"--namespace={STD_NAMESPACE}")
        target = hpa["spec"]["scaleTargetRef"]
        assert (
            (target["kind"], target["name"])
            == ("Deployment", deployment["metadata"]["name"])
            == (
                "Deployment",
                predictor_deployment(stored),
            )
        )
        # kube-controller-manager's HPA controller reads that Deployment's scale subresource
        deadline = time.monotonic() + 30
        while True:
            conditions = kubectl_json(plane, "get", "hpa", "std-optimizer", f"--namespace={STD_NAMESPACE}")["status"].get(
                "conditions", []
            )
            able = next((c for c in conditions if c["type"] == "AbleToScale"), None)
            if able and able["status"] == "True":
                break
            assert time.monotonic() < deadline, f"the HPA never got its target's scale: {conditions}"
            time.sleep(0.5)
    finally:
        await controller.stop()
        await controller.kube.close()


def sample(name: str, file: str) -> dict:
    isvc = yaml.safe_load((ROOT / "config" / "samples" / "keda" / file).read_text())
    isvc["metadata"] |= {"name": name, "namespace": STD_NAMESPACE}
    return isvc


async def test_kserves_keda_class_makes_scaledobjects_we_leave_alone_and_our_scaler_answers(kserve):
    plane = kserve
    samples = {"by-prometheus": sample("by-prometheus", "isvc-kserve-keda.yaml")}
    samples["by-scaler"] = sample("by-scaler", "isvc-kserve-keda-scaler.yaml")
    for isvc_object in samples.values():
        plane.kubectl("create", "--filename=-", input=json.dumps(isvc_object))
    scaled = {name: made_by_kserve(plane, "scaledobject", f"{name}-predictor") for name in samples}
    for name, scaled_object in scaled.items():
        stored = kubectl_json(plane, "get", "inferenceservice", name, f"--namespace={STD_NAMESPACE}")
        assert stored["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS] == "keda"  # our webhook left it
        assert scaled_object["spec"]["scaleTargetRef"]["name"] == predictor_deployment(stored)
        assert (scaled_object["spec"]["minReplicaCount"], scaled_object["spec"]["maxReplicaCount"]) == (1, 10)
    [prometheus] = scaled["by-prometheus"]["spec"]["triggers"]
    assert prometheus["type"] == "prometheus" and prometheus["metadata"]["threshold"] == "1"  # from target.value
    [external] = scaled["by-scaler"]["spec"]["triggers"]
    served_at = samples["by-scaler"]["spec"]["predictor"]["autoScaling"]["metrics"][0]["podmetric"]["metric"]["serverAddress"]
    assert external["type"] == "external" and external["metadata"]["scalerAddress"] == served_at
    query = f'sum(desired_replicas{{namespace="{STD_NAMESPACE}", deployment="by-scaler-predictor"}})'
    assert external["metadata"]["metricQuery"] == query

    controller = await cycled(plane, {(STD_NAMESPACE, name): observed(6.0) for name in samples})
    store = MetricStore(stale_after_s=60, max_age_s=300)
    server = await serve_keda(store, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}")
    try:
        # neither KServe nor the controller: KEDA's HPA alone would scale these
        assert not {f"{name}-predictor" for name in samples} & set(hpa_targets(plane))
        decided = {d.isvc: d for d in controller.hub.current() if d.namespace == STD_NAMESPACE}
        assert set(samples) <= set(decided), decided
        for decision in decided.values():
            for series in series_of(decision):
                store.upsert(series)
        # what KEDA's external scaler sends: the ScaledObject's name and namespace, the trigger's metadata
        ref = KEDA["ScaledObjectRef"](name="by-scaler-predictor", namespace=STD_NAMESPACE, scalerMetadata=external["metadata"])
        keda = KedaClient(channel)
        [spec] = (await keda.get_metric_spec(ref)).metricSpecs
        assert (spec.metricName, spec.targetSizeFloat) == ("desired_replicas", 1.0)
        request = KEDA["GetMetricsRequest"](scaledObjectRef=ref, metricName=spec.metricName)
        [value] = (await keda.get_metrics(request)).metricValues
        assert value.metricValueFloat == decided["by-scaler"].desired_replicas >= 1
    finally:
        await channel.close()
        await server.stop(grace=None)
        await controller.stop()
        await controller.kube.close()
