"""Issue 13, point 5, on the real API server and scheduler: a pod group that does not fit says so on
its ISVC (PodGroupAdmitted=False, InsufficientCapacity: why its pods stay gated), in a status the
real KServe CRD schema accepts, written once and not every pass, and turned True when the group
is admitted once nodes come (the test adds them, as a Cluster Autoscaler or an operator would).
"""

from __future__ import annotations

import asyncio
import json

from autoscaler.gang.admission import CONDITION_TYPE, GangAdmission
from autoscaler.kserve import GPU_PRODUCT_LABEL
from autoscaler.kube import NODES, PODS, Informer, Kube

from ..cluster_objects import isvc
from .conftest import NAMESPACE, kubectl_json, opt_in_namespace
from .test_webhook_gang import revision_deployment, scheduling_gated, until

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
    opt_in_namespace(plane, CONDITION_NAMESPACE)
    plane.kubectl("apply", "--filename=-", input=json.dumps(isvc("tall", "llama-3-8b", namespace=CONDITION_NAMESPACE)))
    deployment = revision_deployment("tall", GROUP, 2, 8)
    deployment["metadata"]["namespace"] = CONDITION_NAMESPACE
    deployment["spec"]["template"]["spec"]["nodeSelector"] = {GPU_PRODUCT_LABEL: B200}
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    pod_cache, nodes = Informer(kube, PODS), Informer(kube, NODES)
    tasks = [asyncio.create_task(pod_cache.run()), asyncio.create_task(nodes.run())]
    selector = f"--selector=serving.knative.dev/revision={GROUP}"

    def pods() -> list[dict]:
        return kubectl_json(plane, "get", "pods", f"--namespace={CONDITION_NAMESPACE}", selector)["items"]

    try:
        await asyncio.wait_for(asyncio.gather(pod_cache.synced.wait(), nodes.synced.wait()), 30)
        gangs = GangAdmission(kube, pod_cache, nodes, NAMESPACE)
        plane.kubectl("apply", "--filename=-", input=json.dumps(deployment))
        until(lambda: len(p := pods()) == 2 and all(scheduling_gated(x) for x in p), "two gated pods")
        await asyncio.sleep(1)  # the informer sees both
        assert (await gangs.reconcile()).waiting == [f"{CONDITION_NAMESPACE}/{GROUP}"]
        waiting, version = condition(plane)
        assert (waiting["status"], waiting["reason"]) == ("False", "InsufficientCapacity"), waiting
        assert GROUP in waiting["message"] and "16 GPUs" in waiting["message"] and "gated" in waiting["message"]
        await gangs.reconcile()
        assert condition(plane) == (waiting, version)  # nothing written while nothing changed

        for i in range(2):
            plane.add_gpu_node(f"gpu-b200-{i}", B200, 8)
        admitted: list[str] = []
        for _ in range(40):  # until the node informer has them
            admitted = (await gangs.reconcile()).admitted
            if admitted:
                break
            await asyncio.sleep(0.5)
        assert admitted == [f"{CONDITION_NAMESPACE}/{GROUP}"]
        now, _ = condition(plane)
        assert (now["status"], now["reason"]) == ("True", "Admitted"), now
        until(lambda: all(p["spec"].get("nodeName") for p in pods()), "the group bound on the new nodes", timeout_s=60)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await kube.close()
        plane.kubectl("delete", "namespace", CONDITION_NAMESPACE, "--timeout=120s", check=False)
        for i in range(2):
            plane.kubectl("delete", "node", f"gpu-b200-{i}", "--ignore-not-found", check=False)
