"""Issue 13, point 1: the controller's decisions stay out of everything KServe propagates.

KServe copies an ISVC's annotations (all but a disallow list) into the Knative revision template
and the Standard Deployment's pod template, so any write of ours to the ISVC's metadata or spec
is a rollout. A replica-only decision must leave them as they were; the decision lives in a
ConfigMap of our namespace, keyed by the ISVC's uid, from which a restarted controller resumes.
"""

from __future__ import annotations

import copy
import json

from autoscaler import annotations as ann
from autoscaler.controller.decision_store import configmap

from .cluster_objects import CONFIGMAPS, ISVCS, NAMESPACE, isvc, stored_decision
from .test_controller import Cluster, StandInCollector, stop
from .test_controller_planning import observed


def propagated(obj: dict) -> dict:
    """What KServe copies into a revision or pod template, or reconciles as the desired state."""
    meta = obj["metadata"]
    return {"annotations": meta.get("annotations"), "labels": meta.get("labels"), "spec": obj["spec"]}


async def test_a_replica_change_changes_no_isvc_spec_or_annotation():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b", raw=False))
        before = copy.deepcopy(propagated(cluster.isvc("chat")))
        collector = StandInCollector({("prod", "chat"): observed(2.0)})
        controller = await cluster.controller(collector)
        try:
            await controller.cycle()
            low = stored_decision(cluster.store, cluster.isvc("chat"))["replicas"]
            collector.observations = {("prod", "chat"): observed(20.0)}
            await cluster.settle(controller, lambda: controller.decisions.read(cluster.isvc("chat")["metadata"]["uid"]))
            await controller.cycle()
            high = stored_decision(cluster.store, cluster.isvc("chat"))["replicas"]
            assert high > low
            assert propagated(cluster.isvc("chat")) == before
            assert cluster.store.calls("PATCH", "/inferenceservices/chat") == cluster.store.calls(
                "PATCH", "/inferenceservices/chat/status"
            )
        finally:
            await stop(controller)


async def test_a_decision_written_on_the_isvc_is_not_resumed_from():
    """A tenant can edit the ISVC; what it says there is not the controller's decision."""
    async with Cluster() as cluster:
        forged = {"accelerator": "L40S", "replicas": 17, "max_batch": 8, "ttft_ms": 1.0, "itl_ms": 1.0}
        forged |= {"arrival_rate": 0.1, "cost": 0.0, "decided_at": 0.0, "ttft_scale": 0.01}
        cluster.store.put(ISVCS, isvc("chat", "llama_13b", decision=json.dumps(forged)))
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(2.0)}))
        try:
            report = await controller.cycle()
            assert not report.rejected and not report.failures
            decided = stored_decision(cluster.store, cluster.isvc("chat"))
            assert decided["ttft_scale"] == 1.0 and decided["replicas"] != 17
        finally:
            await stop(controller)


async def test_the_decision_of_a_deleted_isvc_is_deleted_and_not_inherited_by_its_namesake():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        collector = StandInCollector({("prod", "chat"): observed(12.0)})
        first = await cluster.controller(collector)
        await first.cycle()
        await stop(first)
        old = cluster.isvc("chat")
        # as if it had learned that the model overrates its replicas: an attainment bias < 1
        learned = stored_decision(cluster.store, old) | {"ttft_scale": 0.5, "itl_scale": 0.5}
        cluster.store.put(CONFIGMAPS, configmap(NAMESPACE, old["metadata"], json.dumps(learned)))
        assert stored_decision(cluster.store, old)["ttft_scale"] < 1.0
        cluster.store.remove(ISVCS, "prod", "chat")
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))  # made again: a new uid
        new = cluster.isvc("chat")
        collector.observations = {("prod", "chat"): observed(2.0)}
        second = await cluster.controller(collector)  # a restart: resumes from the cluster only
        try:
            await second.cycle()
            assert stored_decision(cluster.store, old) is None
            assert stored_decision(cluster.store, new)["ttft_scale"] == 1.0
            names = [c["metadata"]["name"] for c in cluster.store.items(CONFIGMAPS) if c["metadata"]["namespace"] == NAMESPACE]
            assert sorted(names) == sorted(["inference-autoscaler-data", f"decision-{new['metadata']['uid']}"])
            assert ann.LEGACY_DECISION not in new["metadata"]["annotations"]
        finally:
            await stop(second)
