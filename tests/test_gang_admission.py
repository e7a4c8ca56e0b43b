"""Gang admission of revision pod groups: placement, and the cases the real control plane cannot stage.

A group below its minimum, one that does not fit, a crash mid-admission and scale-up pods run on
the real kube-apiserver, scheduler and kwok (tests/e2e/test_gang_cases.py), as do admission and
timeout end to end (tests/e2e/test_webhook_gang.py) and a group past its deadline, failed once
(tests/e2e/test_gang_knative.py). Here, on the API emulator
(tests/kube_api_emulator.py: pods, nodes, the ledger ConfigMap, Events and ISVC status through
its REST paths, JSON patches with `test` and resourceVersion checks), what needs the scheduler
held or a fault: the test plays the scheduler by setting nodeName.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from autoscaler import annotations as ann
from autoscaler.kube import NODES as NODE_RESOURCE
from autoscaler.kube import PODS as POD_RESOURCE
from autoscaler.kube import ApiError, Informer, Kube
from autoscaler.gang.admission import LEDGER, GangAdmission, gated
from autoscaler.gang.placement import first_fit, free_resources, pod_may_run_on
from autoscaler.kserve import GPU_PRODUCT_LABEL, ISVC_LABEL, MIN_SCALE
from autoscaler.resources import Resources, pod_requests, quantity

from .cluster_objects import CONFIGMAPS, ISVCS, NAMESPACE, NODES, PODS, gpu_pod, isvc, node
from .kube_api_emulator import KubeApiEmulator
from .test_metrics_adapter_https import serve

NOW = 1_795_000_000.0


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def revision_pod(name: str, group: str = "chat-predictor-00002", gpus: int = 4, created: float = NOW - 10, **annotations) -> dict:
    pod = gpu_pod(name, None, gpus, namespace="prod", labels={ann.POD_GROUP: group, ISVC_LABEL: "chat"})
    pod["metadata"]["creationTimestamp"] = stamp(created)
    pod["metadata"]["annotations"] = {k.replace("_", "-"): v for k, v in annotations.items()}
    pod["spec"]["schedulingGates"] = [{"name": ann.POD_GROUP}]
    pod["spec"]["containers"][0]["resources"]["requests"] = {"cpu": "4", "memory": "32Gi"}
    return pod


# --- pure placement ---


def test_quantities_and_requests():
    assert quantity("500m", milli=True) == 500 and quantity("2", milli=True) == 2000 and quantity("32Gi") == 32 * 2**30
    pod = revision_pod("a")
    pod["spec"]["initContainers"] = [{"name": "fetch", "resources": {"requests": {"cpu": "8", "memory": "1Gi"}}}]
    assert pod_requests(pod) == Resources(gpu=4, cpu_m=8000, memory=32 * 2**30)


def test_first_fit_places_the_whole_group_or_nothing():
    nodes = {n["metadata"]["name"]: n for n in (node("a", "NVIDIA-H100", 8), node("b", "NVIDIA-H100", 8))}
    busy = gpu_pod("training", "a", 6)
    free = free_resources(nodes.values(), [busy], [])
    three = [revision_pod(f"p{i}") for i in range(3)]
    assert first_fit(three[:2], nodes, free) == {"p0": "b", "p1": "b"}
    assert first_fit(three, nodes, free) is None  # a has 2 GPUs left: the third does not fit
    assert first_fit(three, nodes, free_resources(nodes.values(), [], [])) is not None
    assert first_fit(three, nodes, free_resources(nodes.values(), [], [("b", Resources(gpu=8))])) is None


def test_selectors_affinity_and_taints_are_respected():
    h100, l4 = node("h", "NVIDIA-H100", 8), node("l", "NVIDIA-L4", 8)
    l4["spec"] = {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}
    pod = revision_pod("p")
    pod["spec"]["affinity"] = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": ["NVIDIA-L4"]}]}
                ]
            }
        }
    }
    assert not pod_may_run_on(pod, h100) and not pod_may_run_on(pod, l4)  # wrong product; untolerated taint
    pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod_may_run_on(pod, l4)


# --- the admission controller against the API emulator ---


class Gangs:
    def __init__(self):
        self.emulator = KubeApiEmulator()
        self.store = self.emulator.store
        self.store.put(NODES, node("gpu-a", "NVIDIA-H100-80GB-HBM3", 8))
        self.store.put(NODES, node("gpu-b", "NVIDIA-H100-80GB-HBM3", 8))
        self.store.put(ISVCS, isvc("chat", "llama_13b", raw=False))
        self.now = NOW

    async def __aenter__(self):
        self.runner, port = await serve(self.emulator.app())
        self.kube = Kube.at(f"http://127.0.0.1:{port}")
        self.pods = Informer(self.kube, POD_RESOURCE)
        self.nodes = Informer(self.kube, NODE_RESOURCE)
        self.tasks = [asyncio.create_task(self.pods.run()), asyncio.create_task(self.nodes.run())]
        await asyncio.gather(self.pods.synced.wait(), self.nodes.synced.wait())
        return self

    async def __aexit__(self, *exc):
        for task in self.tasks:
            task.cancel()
        self.store.drop_watches()
        await self.kube.close()
        await self.runner.cleanup()

    def admission(self) -> GangAdmission:
        return GangAdmission(
            self.kube,
            self.pods,
            self.nodes,
            NAMESPACE,
            clock=lambda: self.now,
            node_types=lambda: {"gpu-a": "H100", "gpu-b": "H100"},
        )

    async def add(self, *pods: dict) -> None:
        for pod in pods:
            self.store.put(PODS, pod)
        await self.caught_up()

    async def caught_up(self) -> None:
        for _ in range(250):
            if {k: o["metadata"]["resourceVersion"] for k, o in self.pods.objects.items()} == {
                (o["metadata"]["namespace"], o["metadata"]["name"]): o["metadata"]["resourceVersion"]
                for o in self.store.items(PODS)
            }:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("pod informer did not catch up")

    def gated(self) -> set[str]:
        return {p["metadata"]["name"] for p in self.store.items(PODS) if gated(p)}

    def ledger(self) -> dict:
        return (self.store.get(CONFIGMAPS, NAMESPACE, LEDGER) or {}).get("data") or {}


async def test_a_group_that_fits_is_ungated_together_and_the_ledger_settles():
    """emulator: the real scheduler binds ungated pods at once; holding it shows the GPUs reserved
    between ungating and binding."""
    async with Gangs() as cluster:
        await cluster.add(*(revision_pod(f"chat-{i}", **{MIN_SCALE: "3"}) for i in range(3)))
        gangs = cluster.admission()
        outcome = await gangs.reconcile()
        assert outcome.admitted == ["prod/chat-predictor-00002"] and cluster.gated() == set()
        assert gangs.reserved_gpus() == {"H100": 12}  # admitted, not yet bound
        for i, node_name in enumerate(("gpu-a", "gpu-a", "gpu-b")):  # the scheduler binds them
            pod = cluster.store.get(PODS, "prod", f"chat-{i}")
            pod["spec"]["nodeName"] = node_name
            cluster.store.put(PODS, pod)
        await cluster.caught_up()
        await gangs.reconcile()
        assert cluster.ledger() == {} and gangs.reserved_gpus() == {}


async def test_a_crash_before_the_ledger_write_leaves_all_gated_and_a_restart_admits():
    """emulator: the real API server cannot be made to answer 503 to the ledger's writes."""
    async with Gangs() as cluster:
        await cluster.add(*(revision_pod(f"chat-{i}", **{MIN_SCALE: "2"}) for i in range(2)))
        cluster.store.fail("PUT", f"/configmaps/{LEDGER}", 503, times=5)  # every retry of one pass
        with pytest.raises(ApiError):
            await cluster.admission().reconcile()
        assert cluster.gated() == {"chat-0", "chat-1"}
        await cluster.admission().reconcile()
        assert cluster.gated() == set()
