"""The planner's inputs from a real cluster, the controller as config/'s ServiceAccount on the real
kube-apiserver (moved here from tests/test_rollout.py and tests/test_plan_ahead.py, which keep the
pure planner and simulator cases): the GPUs a superseded revision's pods hold on kwok's nodes, the
latency model's counts placed within the GPUs the nodes have free, a cycle brought forward by a
queue building between periods, and the replicas serving, starting on a node and waiting for one
as the planner's hold reads them.

Each test has a namespace of its own (tests/e2e/isvc_namespace.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from autoscaler.controller import controller as controller_module
from autoscaler.controller.catalog import available_capacity, node_gpu_types
from autoscaler.controller.knative import is_ready_pod
from autoscaler.kserve import COMPONENT_LABEL, ISVC_LABEL, PREDICTOR, REVISION_LABEL

from ..cluster_objects import gpu_pod
from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import GPU_NODES
from .isvc_namespace import CHAT, named, stop
from .test_controller_rbac import settled


@dataclasses.dataclass(frozen=True)
class PlannedCycle:
    """What one controller cycle gave the planner, and the plans it got back."""

    capacity: dict
    free: dict | None
    observed: dict
    plans: list


def recorded_cycles(monkeypatch) -> list[PlannedCycle]:
    """Every cycle's call of the real planner from now on, as the controller makes it."""
    cycles = []
    real_plan = controller_module.plan

    def recording_plan(catalog, capacity, services, observed, now, state, settings, free=None):
        plans = real_plan(catalog, capacity, services, observed, now, state, settings, free=free)
        cycles.append(PlannedCycle(capacity, free, observed, plans))
        return plans

    monkeypatch.setattr(controller_module, "plan", recording_plan)
    return cycles


async def bound_on_kwok(namespace, controller, pods: list[dict], image: str) -> None:
    """Create `pods` (bound by their nodeName; kwok sets the status of those on its nodes) and
    wait until the controller's watch shows them."""
    for pod in pods:
        pod["spec"]["containers"][0]["image"] = image
        del pod["status"]
    namespace.apply(pods)
    watched = controller.informers["pods"].objects
    await settled(controller, lambda: all((namespace.name, pod["metadata"]["name"]) in watched for pod in pods))


@named("e2e-superseded-revision")
async def test_the_controller_plans_without_the_gpus_of_a_superseded_revision(namespace, monkeypatch):
    """A cycle's plan gets the cluster's GPUs less the old revision's pods as capacity (the new
    revision's are placed afresh), and less every bound pod as the GPUs free now: pods bound to
    the session's kwok nodes, read through the controller's watch."""
    plane, ns = namespace.plane, namespace.name
    cycles = recorded_cycles(monkeypatch)
    namespace.knative_isvc_kserve_leaves_alone("chat", CHAT)
    status = {"status": {"components": {"predictor": {"latestCreatedRevision": "chat-predictor-00002"}}}}
    plane.kubectl(
        "patch", "inferenceservice", "chat", f"--namespace={ns}", "--subresource=status", "--type=merge",
        f"--patch={json.dumps(status)}",
    )  # fmt: skip
    controller = await namespace.controller(StandInCollector({(ns, "chat"): observed(2.0)}))
    try:
        await settled(controller, lambda: "status" in controller.informers["isvcs"].objects[(ns, "chat")])
        await controller.cycle()
        before = cycles[-1]  # what other tests' pods, if any, leave

        labels = lambda revision: {ISVC_LABEL: "chat", REVISION_LABEL: revision}  # noqa: E731
        pods = [
            gpu_pod("old-a", "gpu-h100-0", 4, ns, labels("chat-predictor-00001")),
            gpu_pod("old-b", "gpu-h100-1", 2, ns, labels("chat-predictor-00001")),
            gpu_pod("new-a", "gpu-l40s-0", 3, ns, labels("chat-predictor-00002")),
        ]
        await bound_on_kwok(namespace, controller, pods, "vllm/vllm-openai")
        await controller.cycle()
    finally:
        await stop(controller)
    capacity, free = cycles[-1].capacity, cycles[-1].free
    assert (capacity["H100"], capacity["L40S"]) == (before.capacity["H100"] - 6, before.capacity["L40S"])
    assert (free["H100"], free["L40S"]) == (before.free["H100"] - 6, before.free["L40S"] - 3)


@named("e2e-beyond-capacity")
async def test_the_controller_places_the_latency_models_counts_within_the_gpus_the_nodes_have(namespace, monkeypatch):
    """The capacity fit (planner.plan, FIT_ROUNDS) on what the real cluster offers: pods of
    another workload, bound to the session's kwok nodes, leave 2 H100s and 4 L40S free; a
    Premium and a Free llama-2-13b ISVC at 2 and 1.5 req/s fit the 2 H100s as 1 + 1 by the
    optimizer's counts and ask 2 + 1 by the latency model's. The Free one is placed on the L40S
    (4 replicas, one GPU each), and the controller's decisions ask no more GPUs of a type than
    the nodes have free (tests/test_controller_planning.py has the rule's cases)."""
    ns = namespace.name
    cycles = recorded_cycles(monkeypatch)
    collector = StandInCollector({(ns, "chat"): observed(2.0), (ns, "batch"): observed(1.5)})
    controller = await namespace.controller(collector)
    try:
        # what other workloads leave free, as the controller's watches show it
        nodes, pods = controller.informers["nodes"].objects.values(), controller.informers["pods"].objects.values()
        types = node_gpu_types(nodes, controller._cluster_data())
        free = available_capacity(nodes, types, pods, lambda _: False, {})
        assert free["H100"] >= 2 and free["L40S"] >= 4, free
        left = {"H100": free["H100"] - 2, "L40S": free["L40S"] - 4}  # the GPUs to take of each type
        fillers = []
        for node_name, _, gpus in GPU_NODES:
            on_node = min(left[types[node_name]], gpus)
            if on_node > 0:
                fillers.append(gpu_pod(f"other-{node_name}", node_name, on_node, ns))
                left[types[node_name]] -= on_node
        await bound_on_kwok(namespace, controller, fillers, "training")
        namespace.create_isvc("chat", CHAT)
        namespace.create_isvc("batch", CHAT, service_class="Free")
        isvcs = controller.informers["isvcs"].objects
        await settled(controller, lambda: (ns, "chat") in isvcs and (ns, "batch") in isvcs)
        await controller.cycle()
    finally:
        await stop(controller)
    capacity = cycles[-1].capacity
    plans = {p.service.name: p for p in cycles[-1].plans if p.service.namespace == ns}
    assert (capacity["H100"], capacity["L40S"]) == (2, 4)
    chat, batch = plans["chat"].decision, plans["batch"].decision
    assert (chat.accelerator, chat.replicas) == ("H100", 2)
    assert (batch.accelerator, batch.replicas) == ("L40S", 4)
    assert not any("wait for one" in p.reason for p in plans.values())


@named("e2e-starting-pods")
async def test_the_controller_reads_replicas_starting_on_a_node_as_holding_a_gpu(namespace, monkeypatch):
    """What planner._held keeps, the replicas serving and those starting on a node, as the
    controller reads them from the real API server (tests/test_plan_ahead.py has the hold
    itself): a predictor pod on a kwok node, which kwok makes Ready, serves; two bound to a node
    whose kubelet has not started them (one kwok does not manage: they stay Pending with no
    Ready condition, as while an image pulls) hold GPUs without serving; one asking more GPUs
    than any node has, which the real scheduler leaves unbound, holds none. The plan is given 1
    ready, 3 bound and 1 waiting; with a pod of a second revision (a roll-out in flight) the
    bound and waiting counts are unknown, and a hold keeps what serves."""
    plane, ns = namespace.plane, namespace.name
    cycles = recorded_cycles(monkeypatch)
    namespace.knative_isvc_kserve_leaves_alone("chat", CHAT)
    # a node with no kubelet acting for it: kwok manages only the nodes carrying its annotation
    node = f"{ns}-starting"
    plane.request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    labels = lambda revision: {ISVC_LABEL: "chat", COMPONENT_LABEL: PREDICTOR, REVISION_LABEL: revision}  # noqa: E731
    first = labels("chat-predictor-00001")
    controller = await namespace.controller(StandInCollector({(ns, "chat"): observed(2.0)}))
    try:
        pods = [
            gpu_pod("serving", GPU_NODES[0][0], 1, ns, first),
            gpu_pod("starting-a", node, 1, ns, first),
            gpu_pod("starting-b", node, 1, ns, first),
            gpu_pod("waiting", None, 64, ns, first),  # more than any node has
        ]
        await bound_on_kwok(namespace, controller, pods, "vllm/vllm-openai")
        watched = controller.informers["pods"].objects
        await settled(controller, lambda: is_ready_pod(watched[(ns, "serving")]), timeout_s=30)
        await controller.cycle()
        during = [gpu_pod("next", GPU_NODES[0][0], 1, ns, labels("chat-predictor-00002"))]
        await bound_on_kwok(namespace, controller, during, "vllm/vllm-openai")
        await settled(controller, lambda: is_ready_pod(watched[(ns, "next")]), timeout_s=30)
        await controller.cycle()
    finally:
        await stop(controller)
        plane.kubectl("delete", "pods", "--all", f"--namespace={ns}", "--grace-period=0", "--force", check=False)
        plane.kubectl("delete", "node", node)
    one_revision, roll_out = (cycle.observed[(ns, "chat")] for cycle in cycles[-2:])
    assert (one_revision.ready_replicas, one_revision.bound_pods, one_revision.unbound_pods) == (1, 3, 1)
    assert (roll_out.ready_replicas, roll_out.bound_pods, roll_out.unbound_pods) == (2, None, None)


class QueueCollector(StandInCollector):
    """A stand-in whose requests in the system can be moved between cycles."""

    def __init__(self, observations):
        super().__init__(observations)
        self.counts = {key: obs.running + obs.waiting for key, obs in observations.items()}

    async def in_system(self):
        return dict(self.counts)


@named("e2e-early-cycle")
async def test_a_queue_building_brings_the_controllers_cycle_forward(namespace):
    namespace.create_isvc("chat", CHAT)
    key = (namespace.name, "chat")
    collector = QueueCollector({key: observed(8.0)})
    controller = await namespace.controller(collector)
    controller.settings = dataclasses.replace(
        controller.settings, probe_s=0.05, planner=dataclasses.replace(controller.settings.planner, early_interval_s=0.2)
    )
    running = asyncio.create_task(controller.run())
    try:
        await settled(controller, lambda: controller.cycles == 1)
        await asyncio.sleep(0.5)  # probes see the same requests in the system: no early cycle
        assert controller.cycles == 1 and controller.early_cycles == 0
        started = time.monotonic()
        collector.counts[key] += 200  # 8 req/s could not add that many within a second
        await settled(controller, lambda: controller.cycles == 2)
        # the period is 30 s; a cycle on the real server, on a loaded machine, takes some of the bound
        assert controller.early_cycles == 1 and time.monotonic() - started < 10.0
        assert namespace.exists("hpa", "chat-optimizer")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await stop(controller)
