"""The controller against a real kube-apiserver, as the ServiceAccount of config/ with its RBAC.

What the emulator cannot show: the emulator authorises everything, so a verb or resource missing
from config/controller/rbac.yaml would only fail in a cluster; it stores whatever it is sent, so
only the real KServe CRD schema (structural, pruning) tells whether our status writes keep their
fields; and only the real server defaults and drops fields of an HPA (or of the ISVC), which
made a controller that compares what it wrote with what it reads back write again every cycle.
"""

from __future__ import annotations

import asyncio
import json
import time

from autoscaler import annotations as ann
from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.decision_stream import DecisionHub
from autoscaler.kube import Kube

from ..cluster_objects import isvc
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import NAMESPACE, kubectl_json, opt_in_namespace

ISVC_NAMESPACE = "e2e-controller"


async def settled(controller: Controller, predicate, timeout_s: float = 20.0) -> None:
    """Until the controller's watch caches show `predicate` (its own writes coming back)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the controller's watches did not catch up"
        await asyncio.sleep(0.05)


async def test_controller_under_its_service_account_decides_and_then_writes_nothing(deployed, gpu_nodes):
    plane = deployed
    opt_in_namespace(plane, ISVC_NAMESPACE)
    plane.kubectl("apply", "--filename=-", input=json.dumps(isvc("chat", "llama-3-8b", namespace=ISVC_NAMESPACE)))
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    collector = StandInCollector({(ISVC_NAMESPACE, "chat"): observed(8.0)})
    controller = Controller(kube, collector, DecisionHub(), ControllerSettings(namespace=NAMESPACE))
    try:
        await controller.start(sync_timeout_s=30)  # every watch allowed by RBAC, else it times out
        report = await controller.cycle()
        assert not report.error and not report.failures and report.services == 1, report.as_dict()

        hpa = kubectl_json(plane, "get", "hpa", "chat-optimizer", f"--namespace={ISVC_NAMESPACE}")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "chat-predictor"
        assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "desired_replicas"
        stored = kubectl_json(plane, "get", "inferenceservice", "chat", f"--namespace={ISVC_NAMESPACE}")
        # the decision is in our namespace, nowhere KServe copies into a revision or pod template
        assert not any(k.startswith(ann.PREFIX + "decision") for k in stored["metadata"]["annotations"])
        kept = kubectl_json(plane, "get", "configmap", f"decision-{stored['metadata']['uid']}", f"--namespace={NAMESPACE}")
        decision = json.loads(kept["data"]["decision"])
        assert decision["replicas"] >= 1 and decision["arrival_rate"] == 8.0
        # the condition survived the real CRD schema's pruning, every field we wrote
        [condition] = [c for c in stored["status"]["conditions"] if c["type"] == "AutoscalerDecision"]
        assert condition["status"] == "True" and f"{decision['replicas']} x {decision['accelerator']}" in condition["message"]

        await settled(
            controller,
            lambda: controller.decisions.read(stored["metadata"]["uid"]) is not None,
        )
        await settled(controller, lambda: (ISVC_NAMESPACE, "chat-optimizer") in controller.informers["hpas"].objects)
        await settled(controller, lambda: "status" in controller.informers["isvcs"].objects[(ISVC_NAMESPACE, "chat")])
        for _ in range(3):  # the same load: what the server stored must read as what we want
            steady = await controller.cycle()
            assert not steady.failures and steady.writes == 0, steady.as_dict()
    finally:
        await controller.stop()
        await kube.close()
        plane.kubectl("delete", "namespace", ISVC_NAMESPACE, "--wait=false")
