"""Issue 13, point 5, on the real kube-apiserver, scheduler and kwok, as config/'s controller
ServiceAccount (moved here from tests/test_gang_knative.py, which keeps the pure parsing): a
group's minimum comes from its revision's PodAutoscaler (Knative >= 1.21 copies no scale
annotation to pods); Knative's progress deadline, read from knative-serving/config-deployment
through the controller's RBAC, caps ours; a failed group is never failed again when its pods come
back (its gated pods deleted, the old revision's untouched, the ISVC told) and is admitted once
it fits. Ages are the admission's clock set past the server's
creationTimestamps. The ungating for the Cluster Autoscaler is tests/e2e/test_webhook_gang_provision.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from autoscaler import annotations as ann
from autoscaler.gang.admission import GangAdmission
from autoscaler.kserve import INITIAL_SCALE, MIN_SCALE
from autoscaler.kube import POD_AUTOSCALERS, Informer

from ..cluster_objects import pod_autoscaler
from .conftest import kubectl_json
from .isvc_namespace import CHAT, named
from .test_controller_rbac import settled
from .test_gang_cases import GROUP, Gangs, old, pod

KNATIVE = ("configmap", "config-deployment", "--namespace=knative-serving")


@contextmanager
def knative_deployment_config(plane, **data: str) -> Iterator[None]:
    """knative-serving/config-deployment with `data` set, put back as it was after; made (in a
    namespace left for Knative's own start) where Knative has not run in this session."""
    found = plane.kubectl("get", *KNATIVE, "--output=json", check=False)
    if found.returncode != 0:
        plane.kubectl("create", "namespace", "knative-serving", check=False)
        configmap = {"apiVersion": "v1", "kind": "ConfigMap", "data": data}
        configmap["metadata"] = {"name": "config-deployment", "namespace": "knative-serving"}
        plane.kubectl("create", "--filename=-", input=json.dumps(configmap))
        try:
            yield
        finally:
            plane.kubectl("delete", *KNATIVE)
        return
    before = json.loads(found.stdout).get("data") or {}
    plane.kubectl("patch", *KNATIVE, "--type=merge", f"--patch={json.dumps({'data': data})}")
    try:
        yield
    finally:
        restore = {key: before.get(key) for key in data}  # null: a key that was not there
        plane.kubectl("patch", *KNATIVE, "--type=merge", f"--patch={json.dumps({'data': restore})}")


def created(cluster: Gangs) -> float:
    """The earliest creationTimestamp the server gave the group's pods: the admission's clock is
    set from it."""
    stamps = [p["metadata"]["creationTimestamp"] for p in cluster.listed() if p["metadata"]["name"].startswith("chat-")]
    return min(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() for stamp in stamps)


async def with_pas(cluster: Gangs, **options) -> GangAdmission:
    pas = Informer(cluster.kube, POD_AUTOSCALERS)
    cluster.tasks.append(asyncio.create_task(pas.run()))
    await asyncio.wait_for(pas.synced.wait(), 30)
    return cluster.admission(pas=pas, **options)


def apply_pa(namespace, **annotations: str) -> None:
    pa = pod_autoscaler("chat", GROUP, namespace=namespace.name)
    del pa["metadata"]["generation"]  # the server's to set
    pa["metadata"]["annotations"] |= annotations
    namespace.apply([pa])


@named("e2e-gang-pa-minimum")
async def test_the_group_minimum_is_read_from_the_pa_not_the_pods(namespace):
    apply_pa(namespace, **{MIN_SCALE: "2", INITIAL_SCALE: "3"})
    async with Gangs(namespace) as cluster:
        gangs = await with_pas(cluster)
        await settled(gangs, lambda: (namespace.name, GROUP) in gangs.pas.objects)
        await cluster.add(*(pod(namespace.name, f"chat-{i}") for i in range(2)))  # Knative 1.23: no scale annotations
        assert (await gangs.reconcile()).waiting == [f"{namespace.name}/{GROUP}"]
        assert cluster.gated() == {"chat-0", "chat-1"}
        await cluster.add(pod(namespace.name, "chat-2"))
        assert (await gangs.reconcile()).admitted == [f"{namespace.name}/{GROUP}"]
        assert cluster.gated() == set()


@named("e2e-gang-knative-deadline")
async def test_knative_s_progress_deadline_caps_ours_and_its_config_is_checked(namespace):
    namespace.knative_isvc_kserve_leaves_alone("chat", CHAT)  # where the PodGroupAdmitted condition goes
    apply_pa(namespace)
    with knative_deployment_config(namespace.plane, **{"progress-deadline": "2m"}):
        async with Gangs(namespace) as cluster:
            await cluster.add(old(namespace.name, "old-0", "gpu-h100-0", 8), old(namespace.name, "old-1", "gpu-h100-1", 8))
            # ours says 600 s; Knative fails the revision at 120 s, so the group must be decided by then
            await cluster.add(*(pod(namespace.name, f"chat-{i}", **{ann.PROGRESS_DEADLINE: "600"}) for i in range(2)))
            start, age = created(cluster), [100.0]
            gangs = await with_pas(cluster, clock=lambda: start + age[0])
            await settled(gangs, lambda: (namespace.name, GROUP) in gangs.pas.objects)
            assert (await gangs.reconcile()).waiting == [f"{namespace.name}/{GROUP}"]
            assert gangs.knative.progress_deadline_s == 120 and "pod-is-always-schedulable" in gangs.knative.problem
            age[0] = 121
            assert (await gangs.reconcile()).failed == [f"{namespace.name}/{GROUP}"]


@named("e2e-gang-failed-once")
async def test_a_failed_group_is_not_failed_again_and_is_admitted_once_it_fits(namespace):
    namespace.knative_isvc_kserve_leaves_alone("chat", CHAT)  # where the PodGroupAdmitted condition goes
    async with Gangs(namespace) as cluster:
        await cluster.add(old(namespace.name, "old-0", "gpu-h100-0", 8), old(namespace.name, "old-1", "gpu-h100-1", 8))
        deadline = {MIN_SCALE: "2", ann.PROGRESS_DEADLINE: "60"}
        await cluster.add(*(pod(namespace.name, f"chat-{i}", **deadline) for i in range(2)))
        start, age = created(cluster), [61.0]
        gangs = cluster.admission(clock=lambda: start + age[0])
        assert (await gangs.reconcile()).failed == [f"{namespace.name}/{GROUP}"]
        assert {p["metadata"]["name"] for p in cluster.listed()} == {"old-0", "old-1"}  # gated ones deleted, not the old
        [condition] = [c for c in namespace.isvc("chat")["status"]["conditions"] if c["type"] == "PodGroupAdmitted"]
        assert (condition["status"], condition["reason"]) == ("False", "ProgressDeadlineExceeded")
        # the ReplicaSet makes them again; hours later they are still gated, holding nothing
        await cluster.add(*(pod(namespace.name, f"chat-{i}-again", **deadline) for i in range(2)))
        for hours in (1, 2, 5):
            age[0] = hours * 3600 + 100
            outcome = await gangs.reconcile()
            assert outcome.failed == [] and outcome.waiting == [f"{namespace.name}/{GROUP}"]
            assert cluster.gated() == {"chat-0-again", "chat-1-again"}
        events = kubectl_json(namespace.plane, "get", "events", f"--namespace={namespace.name}")["items"]
        assert [e["involvedObject"]["name"] for e in events if e["reason"] == "PodGroupTimedOut"] == [GROUP]
        cluster.delete("old-0")  # capacity frees up: the group goes
        await cluster.caught_up()
        assert (await gangs.reconcile()).admitted == [f"{namespace.name}/{GROUP}"]
        assert cluster.gated() == set()
