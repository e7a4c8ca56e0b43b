"""Issue 13, point 5, on the real API server and scheduler: a pod group that does not fit says so on
its ISVC (PodGroupAdmitted=False, InsufficientCapacity: why its pods stay gated), in a status the
real KServe CRD schema accepts, written once and not every pass, and turned True when the group
is admitted once nodes come (the test adds them, as a Cluster Autoscaler or an operator would).
"""

from __future__ import annotations

import asyncio
import json

from autoscaler.gang.admission import CONDITION_TYPE, GangAdmission
from autoscaler.kserve import REVISION_LABEL

from ..cluster_objects import isvc
from .conftest import NAMESPACE, kubectl_json
from .test_webhook_gang import until
from .test_webhook_gang_provision import gated_group

CONDITION_NAMESPACE = "e2e-gang-condition"
B200 = "NVIDIA-B200"  # no node of it until the test adds them
GROUP = "tall-predictor-00001"


def condition(plane) -> tuple[dict, str]:
    """The ISVC's PodGroupAdmitted condition and its resourceVersion."""
    found = kubectl_json(plane, "get", "inferenceservice", "tall", f"--namespace={CONDITION_NAMESPACE}")
    ours = [c for c in found.get("status", {}).get("conditions", []) if c["type"] == CONDITION_TYPE]
    return (ours[0] if ours else {}), found["metadata"]["resourceVersion"]


async def test_a_group_that_does_not_fit_says_why_on_its_isvc_until_admitted(deployed, webhook):
    plane = deployed
    async with gated_group(plane, CONDITION_NAMESPACE, "tall", GROUP, B200) as (kube, pod_cache, nodes):
        plane.kubectl("apply", "--filename=-", input=json.dumps(isvc("tall", "llama-3-8b", namespace=CONDITION_NAMESPACE)))
        gangs = GangAdmission(kube, pod_cache, nodes, NAMESPACE)
        await asyncio.sleep(1)  # the informer sees both pods
        assert (await gangs.reconcile()).waiting == [f"{CONDITION_NAMESPACE}/{GROUP}"]
        waiting, version = condition(plane)
        assert (waiting["status"], waiting["reason"]) == ("False", "InsufficientCapacity"), waiting
        assert GROUP in waiting["message"] and "16 GPUs" in waiting["message"] and "gated" in waiting["message"]
        await gangs.reconcile()
        assert condition(plane) == (waiting, version)  # nothing written while nothing changed

        for i in range(2):
            plane.add_gpu_node(f"gpu-b200-{i}", B200, 8)
        # (the nodes stay: no other test's pods ask for this product)
        admitted: list[str] = []
        for _ in range(40):  # until the node informer has them
            admitted = (await gangs.reconcile()).admitted
            if admitted:
                break
            await asyncio.sleep(0.5)
        assert admitted == [f"{CONDITION_NAMESPACE}/{GROUP}"]
        now, _ = condition(plane)
        assert (now["status"], now["reason"]) == ("True", "Admitted"), now
        selector = f"--selector={REVISION_LABEL}={GROUP}"
        until(
            lambda: all(
                p["spec"].get("nodeName")
                for p in kubectl_json(plane, "get", "pods", f"--namespace={CONDITION_NAMESPACE}", selector)["items"]
            ),
            "the group bound on the new nodes",
            timeout_s=60,
        )
