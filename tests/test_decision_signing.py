"""The decision annotation is signed by the controller (autoscaler/controller/signing.py): a
tenant who can edit an opted-in ISVC cannot set the GPU type or replicas the controller resumes
from, nor copy another ISVC's decision; a restarted controller still resumes from what it
signed."""

from __future__ import annotations

import asyncio
import json

from autoscaler import annotations as ann
from autoscaler.controller.signing import DecisionSigner
from autoscaler.kube import Kube

from .cluster_objects import ISVCS, NAMESPACE, isvc
from .test_controller import Cluster, StandInCollector, decision_of, stop
from .test_controller_planning import observed

KEY_SECRET = "api/v1/secrets"


async def test_a_forged_decision_sets_neither_gpu_type_nor_replicas():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            await controller.cycle()
            genuine = decision_of(cluster, "chat")
            annotations = cluster.isvc("chat")["metadata"]["annotations"]
            assert ann.DECISION_SIGNATURE in annotations
            forged = {**genuine, "accelerator": "L40S" if genuine["accelerator"] != "L40S" else "H100", "replicas": 20}
            for signature in (annotations[ann.DECISION_SIGNATURE], "", "0" * 64):  # kept, dropped, made up
                edited = cluster.isvc("chat")
                edited["metadata"]["annotations"][ann.DECISION] = json.dumps(forged)
                edited["metadata"]["annotations"][ann.DECISION_SIGNATURE] = signature
                cluster.store.put(ISVCS, edited)  # the tenant's edit
                await cluster.settle(
                    controller,
                    lambda: (
                        controller.informers["isvcs"].objects[("prod", "chat")]["metadata"]["annotations"][ann.DECISION]
                        == json.dumps(forged)
                    ),
                )
                await controller.cycle()
                [published] = controller.hub.current()
                assert (published.accelerator, published.desired_replicas) == (genuine["accelerator"], genuine["replicas"])
                rewritten = decision_of(cluster, "chat")
                assert (rewritten["accelerator"], rewritten["replicas"]) == (genuine["accelerator"], genuine["replicas"])
        finally:
            await stop(controller)


async def test_a_decision_copied_from_another_isvc_is_not_believed():
    signer = DecisionSigner(b"k" * 32)
    text = json.dumps({"accelerator": "H100", "replicas": 9})
    signature = signer.sign("uid-a", "prod", "a", text)
    assert signer.verify("uid-a", "prod", "a", text, signature)
    assert not signer.verify("uid-b", "prod", "b", text, signature)  # another ISVC
    assert not signer.verify("uid-a2", "prod", "a", text, signature)  # deleted and made again under the same name
    assert not DecisionSigner(b"x" * 32).verify("uid-a", "prod", "a", text, signature)  # another key


async def test_replicas_share_one_key_made_on_first_start():
    async with Cluster() as cluster:
        kubes = [Kube.at(cluster.url) for _ in range(3)]
        try:
            signers = await asyncio.gather(
                *(DecisionSigner.from_secret(k, NAMESPACE, "inference-autoscaler-decision-key") for k in kubes)
            )
            signatures = {s.sign("u", "prod", "chat", "{}") for s in signers}
            assert len(signatures) == 1
            assert cluster.store.get(KEY_SECRET, NAMESPACE, "inference-autoscaler-decision-key")["type"] == "Opaque"
        finally:
            for k in kubes:
                await k.close()
