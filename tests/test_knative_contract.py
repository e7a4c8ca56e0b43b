"""Issue 13, point 3: our PodAutoscaler class keeps Knative's PodAutoscaler contract, so a new
revision is not Ready (and the old one not scaled away) before it can serve: service names from
the SKS; ScaleTargetInitialized once the SKS is Ready and max(min-scale, initial-scale) pods are,
never reset; Ready = Active AND ScaleTargetInitialized AND SKSReady; the SKS kept as we made it.
"""

from __future__ import annotations

from autoscaler.kserve import INITIAL_SCALE, MIN_SCALE, REVISION_LABEL

from .cluster_objects import ISVCS, PAS, PODS, SKSS, gpu_pod, isvc, pod_autoscaler
from .test_controller import Cluster, StandInCollector, stop
from .test_controller_planning import observed

REVISION = "chat-predictor-00001"


def knative_isvc() -> dict:
    obj = isvc("chat", "llama_13b", raw=False)
    obj["status"] = {"components": {"predictor": {"latestCreatedRevision": REVISION}}}
    return obj


def ready_pod(index: int) -> dict:
    pod = gpu_pod(f"{REVISION}-{index}", f"h100-{index % 4}", 1, namespace="prod", labels={REVISION_LABEL: REVISION})
    pod["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return pod


def conditions(cluster: Cluster) -> dict[str, str]:
    return {c["type"]: c["status"] for c in cluster.store.get(PAS, "prod", REVISION)["status"]["conditions"]}


async def cycle_when_seen(cluster: Cluster, controller, ready_pods: int) -> None:
    def seen() -> bool:
        pods = [p for p in controller.informers["pods"].objects.values() if p["metadata"]["name"].startswith(REVISION)]
        return len(pods) == ready_pods and ("prod", REVISION) in controller.informers["sks"].objects

    await cluster.settle(controller, seen)
    report = await controller.cycle()
    assert not report.failures, report.failures


async def test_scale_target_initialized_waits_for_the_sks_and_initial_scale_and_is_never_reset():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, knative_isvc())
        pa = pod_autoscaler("chat", REVISION)
        pa["metadata"]["annotations"] |= {MIN_SCALE: "2", INITIAL_SCALE: "3"}
        cluster.store.put(PAS, pa)
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            await controller.cycle()  # makes the SKS, not Ready yet
            assert conditions(cluster)["Ready"] != "True" and conditions(cluster)["ScaleTargetInitialized"] != "True"

            sks = cluster.store.get(SKSS, "prod", REVISION)
            sks["status"] = {
                "serviceName": REVISION,
                "privateServiceName": f"{REVISION}-private",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
            cluster.store.put(SKSS, sks)
            for i in range(2):  # min-scale's 2, below initial-scale's 3
                cluster.store.put(PODS, ready_pod(i))
            await cycle_when_seen(cluster, controller, 2)
            status = cluster.store.get(PAS, "prod", REVISION)["status"]
            assert (status["serviceName"], status["metricsServiceName"]) == (REVISION, f"{REVISION}-private")
            assert status["actualScale"] == 2
            assert conditions(cluster)["ScaleTargetInitialized"] != "True" and conditions(cluster)["Ready"] != "True"

            cluster.store.put(PODS, ready_pod(2))
            await cycle_when_seen(cluster, controller, 3)
            assert conditions(cluster) == {
                "Active": "True",
                "SKSReady": "True",
                "ScaleTargetInitialized": "True",
                "Ready": "True",
            }

            for i in range(3):
                cluster.store.remove(PODS, "prod", f"{REVISION}-{i}")
            await cycle_when_seen(cluster, controller, 0)
            after = conditions(cluster)
            assert after["ScaleTargetInitialized"] == "True" and after["Active"] != "True" and after["Ready"] != "True"
        finally:
            await stop(controller)


async def test_a_serverless_service_changed_by_someone_else_is_set_back():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, knative_isvc())
        cluster.store.put(PAS, pod_autoscaler("chat", REVISION))
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            await controller.cycle()
            sks = cluster.store.get(SKSS, "prod", REVISION)
            assert sks["spec"]["mode"] == "Serve"
            sks["spec"]["mode"] = "Proxy"
            cluster.store.put(SKSS, sks)
            await cluster.settle(
                controller, lambda: controller.informers["sks"].objects[("prod", REVISION)]["spec"]["mode"] == "Proxy"
            )
            await controller.cycle()
            assert cluster.store.get(SKSS, "prod", REVISION)["spec"]["mode"] == "Serve"
        finally:
            await stop(controller)
