"""Admission webhook and gang admission through a real API server, scheduler and ReplicaSets.

What the emulator cannot show: that the API server calls our webhook at all (rules, the CEL
matchConditions, namespace and object selectors, the caBundle, reinvocation) and applies our
JSONPatch to an object the real KServe schema then accepts; that pods made by a real ReplicaSet
(generateName, defaulted fields) are gated at creation; that the real kube-scheduler leaves gated
pods SchedulingGated and binds an ungated group to the fake GPU nodes by their nvidia.com/gpu
capacity; and that our JSON patch with `test` removes a gate as the server's pod validation
allows (gates may only be removed, never added, after creation).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from autoscaler import annotations as ann
from autoscaler.gang.admission import LEDGER, GangAdmission, gated
from autoscaler.kserve import (
    DEPLOYMENT_MODE,
    GPU_PRODUCT_LABEL,
    INITIAL_SCALE,
    ISVC_LABEL,
    KSERVE_AUTOSCALER_CLASS,
    RAW_DEPLOYMENT,
    REVISION_LABEL,
)
from autoscaler.kube import NODES, PODS, Informer, Kube

from ..cluster_objects import isvc
from .conftest import NAMESPACE, kubectl_json, opt_in_namespace

GANG_NAMESPACE = "e2e-gang"
H100 = "NVIDIA-H100-80GB-HBM3"


def revision_deployment(isvc_name: str, revision: str, pods: int, gpus: int, deadline_s: int = 600) -> dict:
    """A revision's Deployment as Knative makes it: the ISVC's annotations copied to the pod
    template, the revision and ISVC labels; the real ReplicaSet controller then makes the pods.
    Named after no ISVC of this module: where KServe and Knative run (test_knative_serving.py)
    they make the real revisions of those."""
    labels = {REVISION_LABEL: revision, ISVC_LABEL: isvc_name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{revision}-deployment", "namespace": GANG_NAMESPACE},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {ann.ENABLED: "true", INITIAL_SCALE: str(pods), ann.PROGRESS_DEADLINE: str(deadline_s)},
                },
                "spec": {
                    "nodeSelector": {GPU_PRODUCT_LABEL: H100},
                    "containers": [
                        {
                            "name": "kserve-container",
                            "image": "vllm/vllm-openai",
                            "resources": {
                                "requests": {"cpu": "1", "memory": "4Gi"},
                                "limits": {"nvidia.com/gpu": str(gpus)},
                            },
                        }
                    ],
                },
            },
        },
    }


def pods_of(plane, revision: str) -> list[dict]:
    return kubectl_json(plane, "get", "pods", f"--namespace={GANG_NAMESPACE}", f"--selector={REVISION_LABEL}={revision}")["items"]


def until(condition, what: str, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def scheduling_gated(pod: dict) -> bool:
    return any(
        c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "SchedulingGated"
        for c in pod.get("status", {}).get("conditions", [])
    )


def ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))


def bound_and_ready(plane, revision: str) -> list[dict]:
    pods = pods_of(plane, revision)
    return pods if pods and all(p["spec"].get("nodeName") and ready(p) for p in pods) else []


@pytest.fixture(scope="module")
def gang_namespace(deployed, webhook):
    opt_in_namespace(deployed, GANG_NAMESPACE)  # the controller writes pods there under config/'s RBAC
    yield deployed
    deployed.kubectl("delete", "namespace", GANG_NAMESPACE, "--wait=false")


def test_isvcs_are_defaulted_and_bad_ones_refused_by_the_registered_webhook(gang_namespace):
    plane = gang_namespace
    serverless = isvc("chat", "llama-3-8b", raw=False, namespace=GANG_NAMESPACE)
    del serverless["metadata"]["annotations"][ann.MIN_REPLICAS], serverless["metadata"]["annotations"][ann.MAX_REPLICAS]
    plane.kubectl("create", "--filename=-", input=json.dumps(serverless))
    stored = kubectl_json(plane, "get", "inferenceservice", "chat", f"--namespace={GANG_NAMESPACE}")
    annotations = stored["metadata"]["annotations"]
    assert annotations[ann.KNATIVE_CLASS] == ann.OUR_KNATIVE_CLASS
    assert annotations[ann.MIN_REPLICAS] and annotations[ann.MAX_REPLICAS]  # the class's bounds
    assert stored["spec"]["predictor"]["minReplicas"] == int(annotations[ann.MIN_REPLICAS])

    raw = isvc("raw", "llama-2-13b", service_class="Bronze", namespace=GANG_NAMESPACE)
    plane.kubectl("create", "--filename=-", input=json.dumps(raw))
    stored = kubectl_json(plane, "get", "inferenceservice", "raw", f"--namespace={GANG_NAMESPACE}")
    assert stored["metadata"]["annotations"][DEPLOYMENT_MODE] == RAW_DEPLOYMENT
    assert stored["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS] == "external"

    bad = isvc("bad", "llama-3-8b", service_class="Platinum", namespace=GANG_NAMESPACE)
    refused = plane.kubectl("create", "--filename=-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and ann.SERVICE_CLASS in refused.stderr, refused.stderr
    # unmanaged ISVCs never reach the webhook (matchConditions)
    unmanaged = isvc("plain", "llama-3-8b", namespace=GANG_NAMESPACE)
    unmanaged["metadata"]["annotations"] = {}
    plane.kubectl("create", "--filename=-", input=json.dumps(unmanaged))
    assert (
        "annotations" not in kubectl_json(plane, "get", "inferenceservice", "plain", f"--namespace={GANG_NAMESPACE}")["metadata"]
    )


async def test_a_group_is_gated_then_admitted_whole_and_bound_and_one_that_never_fits_times_out(gang_namespace, gpu_nodes):
    plane = gang_namespace
    kube = await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "controller")))  # config/'s RBAC
    pods, nodes = Informer(kube, PODS), Informer(kube, NODES)
    tasks = [asyncio.create_task(pods.run()), asyncio.create_task(nodes.run())]
    try:
        await asyncio.wait_for(asyncio.gather(pods.synced.wait(), nodes.synced.wait()), 30)
        gangs = GangAdmission(kube, pods, nodes, NAMESPACE)

        plane.kubectl("apply", "--filename=-", input=json.dumps(revision_deployment("gang", "gang-predictor-00001", 2, 4)))
        created = until(lambda: len(p := pods_of(plane, "gang-predictor-00001")) == 2 and p, "two pods of the ReplicaSet")
        assert all(gated(p) and p["metadata"]["labels"][ann.POD_GROUP] == "gang-predictor-00001" for p in created)
        until(lambda: all(scheduling_gated(p) for p in pods_of(plane, "gang-predictor-00001")), "the scheduler's SchedulingGated")

        async def admitted() -> list[str]:
            await asyncio.sleep(0.5)  # the informer sees the pods the ReplicaSet made
            return (await gangs.reconcile()).admitted

        for _ in range(20):
            if await admitted():
                break
        else:
            pytest.fail("the group that fits was never admitted")
        running = until(lambda: bound_and_ready(plane, "gang-predictor-00001"), "the admitted group bound and Ready")
        assert not any(gated(p) for p in running) and {p["spec"]["nodeName"] for p in running} <= set(gpu_nodes)

        # 3 x 8 H100 GPUs: more than the 16 the cluster has, let alone the 8 left
        plane.kubectl(
            "apply", "--filename=-", input=json.dumps(revision_deployment("big", "big-predictor-00001", 3, 8, deadline_s=3))
        )
        until(lambda: len(pods_of(plane, "big-predictor-00001")) == 3, "three pods of the big group")
        failed: list[str] = []
        deadline = time.monotonic() + 30
        while not failed and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            outcome = await gangs.reconcile()
            assert "e2e-gang/big-predictor-00001" not in outcome.admitted
            failed = outcome.failed
        assert failed == ["e2e-gang/big-predictor-00001"]
        events = kubectl_json(plane, "get", "events", f"--namespace={GANG_NAMESPACE}", "--field-selector=reason=PodGroupTimedOut")
        assert [e["involvedObject"]["name"] for e in events["items"]] == ["big-predictor-00001"]
        ledger = kubectl_json(plane, "get", "configmap", LEDGER, f"--namespace={NAMESPACE}")
        assert json.loads(ledger["data"][f"{GANG_NAMESPACE}.big-predictor-00001"])["state"] == "failed"
        # the ReplicaSet makes the pods again: they stay gated, holding nothing
        again = until(lambda: len(p := pods_of(plane, "big-predictor-00001")) == 3 and p, "the pods made again")
        await asyncio.sleep(1)
        await gangs.reconcile()
        assert all(gated(p) and not p["spec"].get("nodeName") for p in pods_of(plane, "big-predictor-00001")), again
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await kube.close()


def test_a_standard_mode_isvc_is_defaulted_as_raw_deployment(gang_namespace):
    """KServe >= 0.16 stores the mode as Standard (issue 13.2): our webhook must still make it external."""
    plane = gang_namespace
    standard = isvc("standard", "llama-3-8b", namespace=GANG_NAMESPACE)
    standard["metadata"]["annotations"][DEPLOYMENT_MODE] = "Standard"  # what KServe's own webhook writes
    del standard["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS]  # the webhook's to set
    plane.kubectl("create", "--filename=-", input=json.dumps(standard))
    annotations = kubectl_json(plane, "get", "inferenceservice", "standard", f"--namespace={GANG_NAMESPACE}")["metadata"][
        "annotations"
    ]
    assert annotations.get(KSERVE_AUTOSCALER_CLASS) == "external" and ann.KNATIVE_CLASS not in annotations
