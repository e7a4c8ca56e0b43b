"""Issue 13, point 2 on a real kube-apiserver with KServe's v0.20.0 CRD: KServe >= 0.16's
deployment modes decide whether a Standard ISVC's predictor Deployment gets our HPA (moved from
the API emulator). The old names read as the new (RawDeployment as Standard, Serverless as
Knative), and `status.deploymentMode`, which KServe records once, wins over the annotation (KServe's
own order: status, annotation, the config's default). A named predictor's Deployment:
test_kserve_contract.py and test_kserve_standard.py.

The test plays KServe's part, writing `status.deploymentMode` through the status subresource. Where
test_knative_serving.py has started KServe's real manager in this session, that manager records
the mode it read on its first pass (controller.go computes it before patching its finalizer, whose
answer refreshes the resourceVersion, so its status update lands on top of anything written in
between): the test waits for that first record before overwriting it, as it would otherwise race.
"""

from __future__ import annotations

import json
import time

from autoscaler.kserve import DEPLOYMENT_MODE, KSERVE_AUTOSCALER_CLASS

from ..cluster_objects import isvc
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import kubectl_json, problems_in
from .isvc_namespace import CHAT, Namespace, named, stop


def create(namespace: Namespace, name: str, annotated: str | None, recorded: str | None = None, external: bool = True) -> None:
    obj = isvc(name, CHAT, raw=False, namespace=namespace.name)
    annotations = obj["metadata"]["annotations"]
    if external:  # as our webhook leaves a Standard ISVC: KServe makes no HPA of its own
        annotations[KSERVE_AUTOSCALER_CLASS] = "external"
    if annotated:
        annotations[DEPLOYMENT_MODE] = annotated
    namespace.plane.kubectl("apply", "--filename=-", input=json.dumps(obj))
    if recorded:
        if "kserve-manager" in namespace.plane.processes:
            first_record_by_kserve(namespace, name)
        patch = json.dumps({"status": {"deploymentMode": recorded}})
        namespace.plane.kubectl(
            "patch", "inferenceservice", name, f"--namespace={namespace.name}", "--subresource=status", "--type=merge",
            f"--patch={patch}",
        )  # fmt: skip


def first_record_by_kserve(namespace: Namespace, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not (namespace.isvc(name).get("status") or {}).get("deploymentMode"):
        assert time.monotonic() < deadline, f"KServe's manager recorded no mode for {name} in {timeout_s} s"
        time.sleep(0.2)


@named("e2e-modes")
async def test_the_mode_kserve_records_decides_our_hpa_and_kserves_own_hpa_is_refused(namespace):
    create(namespace, "standard", "Standard")
    create(namespace, "legacy", "RawDeployment")
    create(namespace, "recorded", None, recorded="Standard")  # the annotation is optional once recorded
    create(namespace, "moved", "Serverless", recorded="Standard")  # the status wins
    create(namespace, "knative", "RawDeployment", recorded="Knative")
    create(namespace, "own-hpa", "Standard", external=False)
    names = ("standard", "legacy", "recorded", "moved", "knative", "own-hpa")
    controller = await namespace.controller(StandInCollector({(namespace.name, n): observed(1.0) for n in names}))
    try:
        report = await controller.cycle()
        assert not namespace.mine(report), report.as_dict()
        for name in ("standard", "legacy", "recorded", "moved"):
            hpa = kubectl_json(namespace.plane, "get", "hpa", f"{name}-optimizer", f"--namespace={namespace.name}")
            assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{name}-predictor"}
        # Knative by its status: its revisions' PAs are ours to serve, no HPA on a Deployment
        assert not namespace.exists("hpa", "knative-optimizer") and not namespace.exists("hpa", "own-hpa-optimizer")
        [rejected] = problems_in(namespace.name, report.rejected)
        assert rejected.startswith(f"{namespace.name}/own-hpa: Standard mode with KServe's own HPA"), rejected
        assert {d.isvc for d in namespace.published(controller)} == {"standard", "legacy", "recorded", "moved", "knative"}
    finally:
        await stop(controller)
