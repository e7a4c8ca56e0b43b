"""Issue 13, point 4: which revisions our class serves, and how fast it follows Knative.

Retired by the PA's `spec.reachability` (what the routes send traffic to), not by the ISVC's
latest revisions: a canary's previous revision still takes traffic. Every PA of our class is
handled (transformers, ISVCs not decided yet or no longer opted in), PA/SKS/pod events are
followed within seconds rather than at the next 30 s cycle, and a routed revision is never
taken to zero (our class keeps no activator in the path to wake it).
"""

from __future__ import annotations

import asyncio
import time

from autoscaler import annotations as ann

from .cluster_objects import HPAS, ISVCS, PAS, SKSS, isvc, pod_autoscaler, stored_decision
from .test_controller import Cluster, StandInCollector, stop
from .test_controller_planning import observed

DEPLOYMENTS = "apis/apps/v1/deployments"


def revision(cluster: Cluster, name: str, reachability: str = "Reachable", isvc_name: str = "chat", **labels: str) -> None:
    pa = pod_autoscaler(isvc_name, name)
    pa["spec"]["reachability"] = reachability
    pa["metadata"]["labels"] |= labels
    cluster.store.put(PAS, pa)
    cluster.store.put(DEPLOYMENTS, {"metadata": {"name": f"{name}-deployment", "namespace": "prod"}, "spec": {"replicas": 2}})


def replicas(cluster: Cluster, name: str) -> int:
    return cluster.store.get(DEPLOYMENTS, "prod", f"{name}-deployment")["spec"]["replicas"]


def canary_isvc() -> dict:
    obj = isvc("chat", "llama_13b", raw=False)
    # KServe's view: the canary is the latest; the previous revision still takes the rest of the traffic
    obj["status"] = {
        "components": {"predictor": {"latestCreatedRevision": "chat-predictor-3", "latestReadyRevision": "chat-predictor-3"}}
    }
    return obj


async def test_a_canary_s_previous_revision_keeps_serving_and_unrouted_ones_are_retired():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, canary_isvc())
        revision(cluster, "chat-predictor-1", "Unreachable")
        revision(cluster, "chat-predictor-2")  # 80% of the traffic
        revision(cluster, "chat-predictor-3")  # the canary's 20%
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            report = await controller.cycle()
            assert not report.failures, report.failures
            for serving in ("chat-predictor-2", "chat-predictor-3"):
                assert cluster.store.get(HPAS, "prod", serving) is not None
                assert cluster.store.get(PAS, "prod", serving)["status"]["desiredScale"] >= 1
                assert replicas(cluster, serving) == 2
            assert cluster.store.get(PAS, "prod", "chat-predictor-1")["status"]["desiredScale"] == 0
            assert replicas(cluster, "chat-predictor-1") == 0
            assert sorted(d.revision for d in controller.hub.current()) == ["chat-predictor-2", "chat-predictor-3"]
        finally:
            await stop(controller)


async def test_every_pa_of_our_class_is_served_transformers_and_unmanaged_isvcs_included():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, canary_isvc())
        revision(cluster, "chat-predictor-3")
        revision(cluster, "chat-transformer-1", component="transformer")
        opted_out = isvc("legacy", "llama_13b", raw=False)
        opted_out["metadata"]["annotations"][ann.ENABLED] = "false"
        cluster.store.put(ISVCS, opted_out)
        revision(cluster, "legacy-predictor-1", isvc_name="legacy")
        revision(cluster, "legacy-predictor-0", "Unreachable", isvc_name="legacy")
        cluster.store.put(
            DEPLOYMENTS, {"metadata": {"name": "chat-transformer-1-deployment", "namespace": "prod"}, "spec": {"replicas": 0}}
        )
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            report = await controller.cycle()
            assert not report.failures, report.failures
            for name in ("chat-transformer-1", "legacy-predictor-1", "legacy-predictor-0"):
                assert cluster.store.get(SKSS, "prod", name)["spec"]["mode"] == "Serve"
                assert "conditions" in cluster.store.get(PAS, "prod", name)["status"]
            # not under a decision: no HPA of ours, held at least at the initial scale, never scaled down
            assert cluster.store.get(HPAS, "prod", "chat-transformer-1") is None
            assert replicas(cluster, "chat-transformer-1") == 1 and replicas(cluster, "legacy-predictor-1") == 2
            assert replicas(cluster, "legacy-predictor-0") == 0
            assert [d.revision for d in controller.hub.current()] == ["chat-predictor-3"]
        finally:
            await stop(controller)


async def test_a_routed_revision_is_never_taken_to_zero():
    async with Cluster() as cluster:
        obj = canary_isvc()
        obj["metadata"]["annotations"][ann.MIN_REPLICAS] = "0"
        cluster.store.put(ISVCS, obj)
        revision(cluster, "chat-predictor-3")
        collector = StandInCollector({("prod", "chat"): observed(0.5)})
        controller = await cluster.controller(collector)
        try:
            await controller.cycle()
            await cluster.settle(controller, lambda: controller.decisions.read(cluster.isvc("chat")["metadata"]["uid"]))
            collector.observations = {("prod", "chat"): observed(0.0)}
            report = await controller.cycle()
            assert stored_decision(cluster.store, cluster.isvc("chat"))["replicas"] == 0  # the planner's
            assert [d.desired_replicas for d in controller.hub.current()] == [1]
            assert not report.failures
            assert cluster.store.get(PAS, "prod", "chat-predictor-3")["status"]["desiredScale"] == 1
            assert cluster.store.get(HPAS, "prod", "chat-predictor-3") is not None
            assert replicas(cluster, "chat-predictor-3") == 2
        finally:
            await stop(controller)


async def test_knative_events_are_followed_within_seconds_not_at_the_next_cycle():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, canary_isvc())
        revision(cluster, "chat-predictor-3")
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        runner = asyncio.create_task(controller.run())  # period 30 s: one cycle now, the next far away
        try:
            await cluster.settle(controller, lambda: controller.cycles == 1)
            started = time.monotonic()
            revision(cluster, "chat-predictor-4")  # a new revision appears
            await cluster.settle(controller, lambda: cluster.store.get(SKSS, "prod", "chat-predictor-4") is not None)
            await cluster.settle(controller, lambda: "status" in cluster.store.get(PAS, "prod", "chat-predictor-4"))
            pa = cluster.store.get(PAS, "prod", "chat-predictor-3")
            pa["spec"]["reachability"] = "Unreachable"  # the route moved all traffic to 4
            cluster.store.put(PAS, pa)
            await cluster.settle(controller, lambda: replicas(cluster, "chat-predictor-3") == 0)
            assert time.monotonic() - started < 10 and controller.cycles == 1 and controller.reactions >= 1
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await stop(controller)


async def test_a_revision_routed_again_is_woken_from_zero():
    """An HPA does not scale a target at zero replicas: the controller takes it to one first."""
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, canary_isvc())
        revision(cluster, "chat-predictor-3", "Unreachable")
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            await controller.cycle()
            assert replicas(cluster, "chat-predictor-3") == 0
            pa = cluster.store.get(PAS, "prod", "chat-predictor-3")
            pa["spec"]["reachability"] = "Reachable"  # traffic is routed to it again
            cluster.store.put(PAS, pa)
            await cluster.settle(
                controller,
                lambda: controller.informers["pas"].objects[("prod", "chat-predictor-3")]["spec"]["reachability"] == "Reachable",
            )
            await controller.cycle()
            assert replicas(cluster, "chat-predictor-3") == 1 and cluster.store.get(HPAS, "prod", "chat-predictor-3") is not None
        finally:
            await stop(controller)
