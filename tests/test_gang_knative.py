"""Issue 13, point 5: gang admission against Knative and Kubernetes.

Knative >= 1.21 copies no `autoscaling.knative.dev/*` annotation to pods, so a group's minimum
comes from the revision's PodAutoscaler; Knative fails a revision at its own progress deadline,
so ours is capped by it; `pod-is-always-schedulable` is checked; a failed group is never failed
again when its pods come back; and a group that does not fit can be ungated for the Cluster
Autoscaler (which ignores gated pods) to add nodes.
"""

from __future__ import annotations

import asyncio

from autoscaler import annotations as ann
from autoscaler.gang.admission import GangAdmission
from autoscaler.gang.knative_config import KnativeDeploymentConfig, duration_s
from autoscaler.kserve import INITIAL_SCALE, MIN_SCALE
from autoscaler.kube import POD_AUTOSCALERS, Informer

from .cluster_objects import CONFIGMAPS, PAS, PODS, gpu_pod, pod_autoscaler
from .test_gang_admission import NOW, Gangs, revision_pod

GROUP = "chat-predictor-00002"


def knative_config(**data: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-deployment", "namespace": "knative-serving"},
        "data": data,
    }


async def with_pas(cluster: Gangs, **settings) -> GangAdmission:
    pas = Informer(cluster.kube, POD_AUTOSCALERS)
    cluster.tasks.append(asyncio.create_task(pas.run()))
    await pas.synced.wait()
    gangs = cluster.admission()
    gangs.pas = pas
    for key, value in settings.items():
        setattr(gangs, key, value)
    return gangs


async def settle_pas(gangs: GangAdmission, count: int) -> None:
    for _ in range(250):
        if len(gangs.pas.objects) == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("PA informer did not catch up")


async def test_the_group_minimum_is_read_from_the_pa_not_the_pods():
    async with Gangs() as cluster:
        pa = pod_autoscaler("chat", GROUP)
        pa["metadata"]["annotations"] |= {MIN_SCALE: "2", INITIAL_SCALE: "3"}
        cluster.store.put(PAS, pa)
        gangs = await with_pas(cluster)
        await settle_pas(gangs, 1)
        await cluster.add(*(revision_pod(f"chat-{i}") for i in range(2)))  # Knative 1.23: no scale annotations on pods
        assert (await gangs.reconcile()).waiting == [f"prod/{GROUP}"]
        assert cluster.gated() == {"chat-0", "chat-1"}
        await cluster.add(revision_pod("chat-2"))
        assert (await gangs.reconcile()).admitted == [f"prod/{GROUP}"]


async def test_knative_s_progress_deadline_caps_ours_and_its_config_is_checked():
    async with Gangs() as cluster:
        cluster.store.put(CONFIGMAPS, knative_config(**{"progress-deadline": "2m"}))
        cluster.store.put(PAS, pod_autoscaler("chat", GROUP))
        await cluster.add(gpu_pod("old-0", "gpu-a", 8, namespace="prod"), gpu_pod("old-1", "gpu-b", 8, namespace="prod"))
        created = NOW - 10
        # ours says 600 s; Knative fails the revision at 120 s, so the group must be decided by then
        await cluster.add(*(revision_pod(f"chat-{i}", created=created, **{ann.PROGRESS_DEADLINE: "600"}) for i in range(2)))
        gangs = await with_pas(cluster)
        await settle_pas(gangs, 1)
        cluster.now = created + 100
        assert (await gangs.reconcile()).waiting == [f"prod/{GROUP}"]
        assert gangs.knative.progress_deadline_s == 120 and "pod-is-always-schedulable" in gangs.knative.problem
        cluster.now = created + 121
        assert (await gangs.reconcile()).failed == [f"prod/{GROUP}"]


async def test_a_failed_group_is_not_failed_again_and_is_admitted_once_it_fits():
    async with Gangs() as cluster:
        await cluster.add(gpu_pod("old-0", "gpu-a", 8, namespace="prod"), gpu_pod("old-1", "gpu-b", 8, namespace="prod"))
        created = NOW - 10
        deadline = {MIN_SCALE: "2", ann.PROGRESS_DEADLINE: "60"}
        await cluster.add(*(revision_pod(f"chat-{i}", created=created, **deadline) for i in range(2)))
        gangs = cluster.admission()
        cluster.now = created + 61
        assert (await gangs.reconcile()).failed == [f"prod/{GROUP}"]
        # the ReplicaSet makes them again; hours later they are still gated, holding nothing
        await cluster.add(*(revision_pod(f"chat-{i}-again", created=created + 62, **deadline) for i in range(2)))
        for hours in (1, 2, 5):
            cluster.now = created + hours * 3600 + 100
            outcome = await gangs.reconcile()
            assert outcome.failed == [] and outcome.waiting == [f"prod/{GROUP}"]
            assert cluster.gated() == {"chat-0-again", "chat-1-again"}
        assert len(cluster.store.items("api/v1/events")) == 1
        cluster.store.remove(PODS, "prod", "old-0")  # capacity frees up: the group goes
        await cluster.caught_up()
        assert (await gangs.reconcile()).admitted == [f"prod/{GROUP}"]


async def test_a_group_that_does_not_fit_is_ungated_for_the_cluster_autoscaler_when_asked():
    async with Gangs() as cluster:
        await cluster.add(gpu_pod("old-0", "gpu-a", 8, namespace="prod"), gpu_pod("old-1", "gpu-b", 8, namespace="prod"))
        created = NOW - 10
        await cluster.add(*(revision_pod(f"chat-{i}", created=created, **{MIN_SCALE: "2"}) for i in range(2)))
        gangs = cluster.admission()
        gangs.provision_after_s = 30
        assert (await gangs.reconcile()).waiting == [f"prod/{GROUP}"]  # 10 s: still waiting gated
        cluster.now = created + 31
        assert (await gangs.reconcile()).provisioning == [f"prod/{GROUP}"]
        assert cluster.gated() == set()  # Pending: what the Cluster Autoscaler adds nodes for
        assert (await gangs.reconcile()).provisioning == []  # once
        for i in range(2):  # new nodes came; the scheduler binds them
            pod = cluster.store.get(PODS, "prod", f"chat-{i}")
            pod["spec"]["nodeName"] = f"new-{i}"
            cluster.store.put(PODS, pod)
        await cluster.caught_up()
        await gangs.reconcile()
        assert cluster.ledger() == {}


def test_go_durations_and_the_config_s_defaults():
    assert duration_s("600s") == 600 and duration_s("10m") == 600 and duration_s("1h30m") == 5400
    assert duration_s("ten") is None and duration_s("") is None
    assert KnativeDeploymentConfig.from_configmap(knative_config()).progress_deadline_s == 600
    assert KnativeDeploymentConfig.from_configmap(knative_config(**{"pod-is-always-schedulable": "true"})).problem == ""
