"""Gang admission's cases on the real kube-apiserver, scheduler and kwok, as config/'s controller
ServiceAccount: a group below its minimum waits, a group that does not fit holds nothing until it
does, a crash mid-admission ends with the whole group admitted, a running group's scale-up pods
join one by one (moved here from tests/test_gang_admission.py). The test makes the pods itself,
gated as our webhook leaves them; those it places on a node (the old revision's) carry nodeName.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from autoscaler import annotations as ann
from autoscaler.gang.admission import LEDGER, GangAdmission, gated
from autoscaler.kserve import GPU_PRODUCT_LABEL, INITIAL_SCALE, ISVC_LABEL, MIN_SCALE
from autoscaler.kube import NODES, PODS, Informer, Kube

from .conftest import GPU_NODES, NAMESPACE, kubectl_json
from .isvc_namespace import named

H100 = "NVIDIA-H100-80GB-HBM3"
GROUP = "chat-predictor-00002"
TYPES = {name: product.split("-")[1] for name, product, _ in GPU_NODES}  # gpu-h100-0: H100, ...


class Killed(Exception):
    """The controller process dying at this point (the test stops the pass there)."""


def pod(namespace: str, name: str, gpus: int = 4, node: str | None = None, **annotations: str) -> dict:
    """A pod of the revision's group (gated, unless placed on `node`), or of the old revision."""
    spec = {
        "nodeSelector": {GPU_PRODUCT_LABEL: H100},
        "containers": [
            {
                "name": "main",
                "image": "vllm/vllm-openai",
                "resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ],
    }
    labels = {ann.POD_GROUP: GROUP, ISVC_LABEL: "chat"}
    if node:
        spec["nodeName"] = node
    else:
        spec["schedulingGates"] = [{"name": ann.POD_GROUP}]
    metadata = {"name": name, "namespace": namespace, "labels": labels, "annotations": annotations}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def old(namespace: str, name: str, node: str, gpus: int) -> dict:
    """A pod of the revision before, already running on `node`: in no group."""
    made = pod(namespace, name, gpus, node)
    del made["metadata"]["labels"][ann.POD_GROUP]
    return made


class Gangs:
    def __init__(self, namespace):
        self.plane, self.ns = namespace.plane, namespace.name

    async def __aenter__(self):
        self.kube = await Kube.connect(str(self.plane.service_account_kubeconfig(NAMESPACE, "controller")))
        self.pods, self.nodes = Informer(self.kube, PODS), Informer(self.kube, NODES)
        self.tasks = [asyncio.create_task(self.pods.run()), asyncio.create_task(self.nodes.run())]
        await asyncio.wait_for(asyncio.gather(self.pods.synced.wait(), self.nodes.synced.wait()), 30)
        return self

    async def __aexit__(self, *exc):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.kube.close()

    def admission(self, **options) -> GangAdmission:
        return GangAdmission(self.kube, self.pods, self.nodes, NAMESPACE, node_types=lambda: TYPES, **options)

    def listed(self) -> list[dict]:
        return kubectl_json(self.plane, "get", "pods", f"--namespace={self.ns}")["items"]

    async def add(self, *pods: dict) -> None:
        for made in pods:
            self.plane.request("POST", f"/api/v1/namespaces/{self.ns}/pods", made)
        await self.caught_up()

    async def caught_up(self) -> None:
        """Until the informer holds every pod of the namespace at the version the server has."""
        for _ in range(250):
            listed = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in self.listed()}
            cached = {k[1]: o["metadata"]["resourceVersion"] for k, o in self.pods.objects.items() if k[0] == self.ns}
            if listed == cached:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("pod informer did not catch up")

    def gated(self) -> set[str]:
        return {p["metadata"]["name"] for p in self.listed() if gated(p)}

    def ledger(self) -> dict:
        found = self.plane.kubectl("get", "configmap", LEDGER, f"--namespace={NAMESPACE}", "--output=json", check=False)
        return (json.loads(found.stdout).get("data") or {}) if found.returncode == 0 else {}

    def delete(self, name: str) -> None:
        self.plane.kubectl("delete", "pod", name, f"--namespace={self.ns}", "--grace-period=0", "--force")


@named("e2e-gang-incomplete")
async def test_an_incomplete_group_waits_for_its_minimum(namespace):
    async with Gangs(namespace) as cluster:
        await cluster.add(*(pod(namespace.name, f"chat-{i}", **{INITIAL_SCALE: "3"}) for i in range(2)))
        gangs = cluster.admission()
        assert (await gangs.reconcile()).waiting == [f"{namespace.name}/{GROUP}"]
        assert cluster.gated() == {"chat-0", "chat-1"}
        assert gangs.reserved_gpus() == {"H100": 8}  # the optimizer keeps them for the new revision
        await cluster.add(pod(namespace.name, "chat-2", **{INITIAL_SCALE: "3"}))
        assert (await gangs.reconcile()).admitted == [f"{namespace.name}/{GROUP}"]
        assert cluster.gated() == set()


@named("e2e-gang-no-fit")
async def test_a_group_that_does_not_fit_holds_nothing_until_it_does(namespace):
    async with Gangs(namespace) as cluster:
        await cluster.add(old(namespace.name, "old-0", "gpu-h100-0", 8), old(namespace.name, "old-1", "gpu-h100-1", 4))
        await cluster.add(*(pod(namespace.name, f"chat-{i}", **{MIN_SCALE: "2"}) for i in range(2)))
        gangs = cluster.admission()
        assert (await gangs.reconcile()).waiting == [f"{namespace.name}/{GROUP}"]
        assert cluster.gated() == {"chat-0", "chat-1"}  # one would fit on gpu-h100-1: none goes
        cluster.delete("old-0")  # the old revision scales down
        await cluster.caught_up()
        assert (await gangs.reconcile()).admitted == [f"{namespace.name}/{GROUP}"]
        assert cluster.gated() == set()


@pytest.mark.parametrize("ungated_before_crash", [0, 1])
@named("e2e-gang-crash")
async def test_a_crash_mid_admission_ends_all_admitted(namespace, ungated_before_crash):
    async with Gangs(namespace) as cluster:
        await cluster.add(*(pod(namespace.name, f"chat-{i}", **{MIN_SCALE: "3"}) for i in range(3)))
        crashing = cluster.admission()
        calls = 0
        real_ungate = crashing._ungate

        async def ungate_then_crash(pod_namespace, name):
            nonlocal calls
            calls += 1
            if calls > ungated_before_crash:
                raise Killed("controller killed")
            await real_ungate(pod_namespace, name)

        crashing._ungate = ungate_then_crash
        with pytest.raises(Killed):
            await crashing.reconcile()
        await asyncio.sleep(0.5)  # a request already on the wire when the process died still lands
        assert len(cluster.gated()) == 3 - ungated_before_crash and f"{namespace.name}.{GROUP}" in cluster.ledger()
        await cluster.caught_up()
        await cluster.admission().reconcile()
        assert cluster.gated() == set()


@named("e2e-gang-scale-up")
async def test_scale_up_pods_of_a_running_group_join_one_by_one(namespace):
    async with Gangs(namespace) as cluster:
        await cluster.add(pod(namespace.name, "chat-0", node="gpu-h100-0"), pod(namespace.name, "chat-1", **{MIN_SCALE: "3"}))
        outcome = await cluster.admission().reconcile()
        assert outcome.admitted == [f"{namespace.name}/{GROUP}/chat-1"] and cluster.gated() == set()
