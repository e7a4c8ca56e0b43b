"""Issue 13 on a real kube-apiserver with KServe's v0.20.0 CRD: a replica change leaves the ISVC's
generation and annotations as they were (nothing for KServe to propagate into a new revision or
ReplicaSet), and a Standard ISVC with a named predictor gets its HPA on `{isvc}-{name}-predictor`.
"""

from __future__ import annotations

import json

from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.controller.decision_store import name_for
from autoscaler.decision_stream import DecisionHub
from autoscaler.kserve import DEPLOYMENT_MODE, KSERVE_AUTOSCALER_CLASS
from autoscaler.kube import Kube

from ..cluster_objects import isvc
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import NAMESPACE, kubectl_json, opt_in_namespace, problems_in
from .test_controller_rbac import settled

ISVC_NAMESPACE = "e2e-contract"


async def test_replica_changes_leave_the_isvc_alone_and_standard_hpas_target_the_predictor(deployed, gpu_nodes):
    plane = deployed
    opt_in_namespace(plane, ISVC_NAMESPACE)
    standard = isvc("std", "llama-3-8b", raw=False, namespace=ISVC_NAMESPACE)
    standard["metadata"]["annotations"] |= {DEPLOYMENT_MODE: "Standard", KSERVE_AUTOSCALER_CLASS: "external"}
    standard["spec"]["predictor"]["name"] = "main"
    plane.kubectl("apply", "--filename=-", input=json.dumps(standard))
    before = kubectl_json(plane, "get", "inferenceservice", "std", f"--namespace={ISVC_NAMESPACE}")["metadata"]
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    collector = StandInCollector({(ISVC_NAMESPACE, "std"): observed(1.0)})
    controller = Controller(kube, collector, DecisionHub(), ControllerSettings(namespace=NAMESPACE))
    try:
        await controller.start(sync_timeout_s=30)
        report = await controller.cycle()
        assert not problems_in(ISVC_NAMESPACE, report.rejected) and not problems_in(ISVC_NAMESPACE, report.failures), (
            report.as_dict()
        )
        hpa = kubectl_json(plane, "get", "hpa", "std-optimizer", f"--namespace={ISVC_NAMESPACE}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "std-main-predictor"

        def stored() -> dict:
            found = kubectl_json(plane, "get", "configmap", name_for(before["uid"]), f"--namespace={NAMESPACE}")
            return json.loads(found["data"]["decision"])

        low = stored()["replicas"]
        await settled(controller, lambda: controller.decisions.read(before["uid"]) is not None)
        collector.observations = {(ISVC_NAMESPACE, "std"): observed(30.0)}
        report = await controller.cycle()
        assert not problems_in(ISVC_NAMESPACE, report.failures), report.as_dict()
        assert stored()["replicas"] > low
        after = kubectl_json(plane, "get", "inferenceservice", "std", f"--namespace={ISVC_NAMESPACE}")["metadata"]
        assert (after["generation"], after["annotations"], after.get("labels")) == (
            before["generation"],
            before["annotations"],
            before.get("labels"),
        )
    finally:
        await controller.stop()
        await kube.close()
        # gone before the next test, whose cycles would otherwise see (and count) this one's ISVCs
        plane.kubectl("delete", "namespace", ISVC_NAMESPACE, "--timeout=120s", check=False)
