"""ISVCs scaled by KEDA on the real kube-apiserver, as config/'s controller ServiceAccount: one
switched to a ScaledObject of the cluster's (our `scaler: keda`) loses the HPA we had made, one
KServe would scale with its own ScaledObject (`autoscalerClass: keda`) never gets one, and the
decisions of both still flow to the scaler (moved here from tests/test_keda_scaler.py, which
keeps the gRPC contract of our External Scaler; KServe's own ScaledObjects with the real KServe
manager are tests/e2e/test_kserve_standard.py).

What the real server adds: config/samples/keda/scaledobject-external-push.yaml applied as it is,
its ISVC through our webhook (config/'s MutatingWebhookConfiguration) and its ScaledObject
validated by KEDA's own CRD schema; the HPA deleted within the controller Role's verbs. KEDA's
operator does not run: nothing acts on the ScaledObject.
"""

from __future__ import annotations

import json

import pytest
import yaml

from autoscaler import annotations as ann
from autoscaler.kserve import KSERVE_AUTOSCALER_CLASS, predictor_deployment

from ..cluster_objects import isvc
from ..control_plane import ROOT, ControlPlaneUnavailable
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import kubectl_json, problems_in
from .isvc_namespace import CHAT, CODE, named, stop
from .test_controller_rbac import settled

SAMPLE = ROOT / "config" / "samples" / "keda" / "scaledobject-external-push.yaml"


@pytest.fixture(scope="module")
def scaledobjects(deployed):
    try:
        deployed.install_scaledobject_crd()
    except ControlPlaneUnavailable as exc:
        pytest.fail(f"KEDA's ScaledObject CRD is unavailable: {exc}", pytrace=False)


@named("e2e-keda")
async def test_an_isvc_scaled_by_keda_gets_no_hpa_of_ours_but_its_decision_still_flows(namespace, scaledobjects, webhook):
    plane, ns = namespace.plane, namespace.name
    sample = yaml.safe_load(SAMPLE.read_text())
    for item in sample["items"]:
        item["metadata"]["namespace"] = ns
    own = sample["items"][0]["metadata"]["name"]
    assert own == CODE  # a model of config/data
    namespace.create_isvc("chat", CHAT)
    collector = StandInCollector({(ns, name): observed(8.0) for name in ("chat", "kserve", own)})
    controller = await namespace.controller(collector)
    try:
        assert not namespace.mine(await controller.cycle())
        assert namespace.exists("hpa", "chat-optimizer")
        # a ScaledObject of the cluster's takes over
        plane.kubectl("annotate", "inferenceservice", "chat", f"{ann.SCALER}=keda", f"--namespace={ns}")
        by_kserve = isvc("kserve", CHAT, namespace=ns)
        by_kserve["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS] = "keda"  # KServe's ScaledObject
        plane.kubectl("create", "--filename=-", input=json.dumps(by_kserve))
        created = plane.kubectl("create", "--filename=-", input=json.dumps(sample))
        assert "Warning" not in created.stderr, created.stderr  # our webhook's warnings reach kubectl
        isvcs = controller.informers["isvcs"].objects
        await settled(controller, lambda: {(ns, "kserve"), (ns, own)} <= set(isvcs))
        await settled(controller, lambda: ann.SCALER in isvcs[(ns, "chat")]["metadata"]["annotations"])
        report = await controller.cycle()
        assert not namespace.mine(report) and not problems_in(ns, report.rejected), report.as_dict()
        assert kubectl_json(plane, "get", "hpa", f"--namespace={ns}")["items"] == []
        assert sorted(d.isvc for d in namespace.published(controller)) == sorted(["chat", "kserve", own])
        stored = namespace.isvc(own)
        assert stored["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS] == "external"  # our webhook: KServe makes no HPA
        scaled_object = kubectl_json(plane, "get", "scaledobject", own, f"--namespace={ns}")
        assert scaled_object["spec"]["scaleTargetRef"]["name"] == predictor_deployment(stored)
        assert scaled_object["spec"]["triggers"][0]["metadata"]["isvc"] == own
    finally:
        await stop(controller)
