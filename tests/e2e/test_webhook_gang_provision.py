"""Issue 13, point 5, with the real scheduler: a pod group that does not fit is ungated for the
Cluster Autoscaler (`provision_after_s`), so its pods go Pending as Unschedulable (what the
autoscaler adds nodes for; gated pods it ignores), and once nodes come the scheduler binds them
and the ledger settles. The autoscaler is played by the test adding the fake nodes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from autoscaler.gang.admission import LEDGER, GangAdmission, gated
from autoscaler.kserve import GPU_PRODUCT_LABEL, REVISION_LABEL
from autoscaler.kube import NODES, PODS, Informer, Kube

from .conftest import NAMESPACE, kubectl_json, opt_in_namespace
from .test_webhook_gang import revision_deployment, scheduling_gated, until

PROVISION_NAMESPACE = "e2e-provision"
A100 = "NVIDIA-A100-SXM4-80GB"  # no node of it yet
GROUP = "wide-predictor-00001"


def pods(plane) -> list[dict]:
    selector = f"--selector={REVISION_LABEL}={GROUP}"
    return kubectl_json(plane, "get", "pods", f"--namespace={PROVISION_NAMESPACE}", selector)["items"]


def unschedulable(pod: dict) -> bool:
    return any(
        c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
        for c in pod.get("status", {}).get("conditions", [])
    )


@asynccontextmanager
async def gated_group(plane, namespace: str, isvc_name: str, group: str, product: str) -> AsyncIterator[tuple]:
    """In a new opted-in `namespace`, `group`'s Deployment of 2 pods x 8 GPUs on nodes of `product`
    (none yet), its pods gated by our webhook; yields the controller's client (its ServiceAccount)
    and its synced pod and node informers. The namespace is deleted after."""
    opt_in_namespace(plane, namespace)
    deployment = revision_deployment(isvc_name, group, 2, 8)
    deployment["metadata"]["namespace"] = namespace
    deployment["spec"]["template"]["spec"]["nodeSelector"] = {GPU_PRODUCT_LABEL: product}
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))
    pod_cache, nodes = Informer(kube, PODS), Informer(kube, NODES)
    tasks = [asyncio.create_task(pod_cache.run()), asyncio.create_task(nodes.run())]
    selector = f"--selector={REVISION_LABEL}={group}"
    try:
        await asyncio.wait_for(asyncio.gather(pod_cache.synced.wait(), nodes.synced.wait()), 30)
        plane.kubectl("apply", "--filename=-", input=json.dumps(deployment))
        until(
            lambda: (
                len(p := kubectl_json(plane, "get", "pods", f"--namespace={namespace}", selector)["items"]) == 2
                and all(scheduling_gated(x) for x in p)
            ),
            "two gated pods",
        )
        yield kube, pod_cache, nodes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await kube.close()
        plane.kubectl("delete", "namespace", namespace, "--timeout=120s", check=False)


async def test_a_group_that_does_not_fit_goes_pending_for_the_cluster_autoscaler_and_binds_on_new_nodes(deployed, webhook):
    plane = deployed
    async with gated_group(plane, PROVISION_NAMESPACE, "wide", GROUP, A100) as (kube, pod_cache, nodes):
        gangs = GangAdmission(kube, pod_cache, nodes, NAMESPACE, provision_after_s=1.0)
        provisioned: list[str] = []
        for _ in range(40):
            await asyncio.sleep(0.5)
            provisioned = (await gangs.reconcile()).provisioning
            if provisioned:
                break
        assert provisioned == [f"{PROVISION_NAMESPACE}/{GROUP}"]
        assert (await gangs.reconcile()).provisioning == []  # once
        pending = until(lambda: len(p := pods(plane)) == 2 and all(unschedulable(x) for x in p) and p, "Unschedulable pods")
        assert not any(gated(p) for p in pending)

        for i in range(2):  # the Cluster Autoscaler's scale-up
            plane.add_gpu_node(f"gpu-a100-{i}", A100, 8)
        until(lambda: all(p["spec"].get("nodeName") for p in pods(plane)), "the group bound on the new nodes", timeout_s=60)
        await asyncio.sleep(1)  # the informer sees them bound
        await gangs.reconcile()
        ledger = kubectl_json(plane, "get", "configmap", LEDGER, f"--namespace={NAMESPACE}").get("data") or {}
        assert f"{PROVISION_NAMESPACE}.{GROUP}" not in ledger
