"""Issue 13, point 1, on the real kube-apiserver as config/'s controller ServiceAccount: each
ISVC's decision lives in a ConfigMap of our namespace keyed by the ISVC's uid, never on the ISVC
(moved here from tests/test_decision_store.py; that a replica change leaves the ISVC's spec,
generation and annotations alone is tests/e2e/test_kserve_contract.py).

What the real server adds: uids it assigns (an ISVC made again under the same name gets a new
one), and the controller Role's verbs on ConfigMaps (a decision of a deleted ISVC is deleted).
"""

from __future__ import annotations

import json

from autoscaler import annotations as ann
from autoscaler.controller.decision_store import DECISION_KEY, name_for

from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .conftest import NAMESPACE, problems_in
from .isvc_namespace import CHAT, named, stop


@named("e2e-forged-decision")
async def test_a_decision_written_on_the_isvc_is_not_resumed_from(namespace):
    """A tenant can edit the ISVC; what it says there is not the controller's decision."""
    forged = {"accelerator": "L40S", "replicas": 17, "max_batch": 8, "ttft_ms": 1.0, "itl_ms": 1.0}
    forged |= {"arrival_rate": 0.1, "cost": 0.0, "decided_at": 0.0, "ttft_scale": 0.01}
    namespace.create_isvc("chat", CHAT, decision=json.dumps(forged))
    assert namespace.isvc("chat")["metadata"]["annotations"][ann.LEGACY_DECISION]
    controller = await namespace.controller(StandInCollector({(namespace.name, "chat"): observed(2.0)}))
    try:
        report = await controller.cycle()
        assert not namespace.mine(report) and not problems_in(namespace.name, report.rejected), report.as_dict()
        decided = namespace.decision("chat")
        assert decided["ttft_scale"] == 1.0 and decided["replicas"] != 17
    finally:
        await stop(controller)


@named("e2e-namesake")
async def test_the_decision_of_a_deleted_isvc_is_deleted_and_not_inherited_by_its_namesake(namespace):
    plane = namespace.plane
    namespace.create_isvc("chat", CHAT)
    collector = StandInCollector({(namespace.name, "chat"): observed(12.0)})
    first = await namespace.controller(collector)
    try:
        assert not namespace.mine(await first.cycle())
    finally:
        await stop(first)
    old = namespace.isvc("chat")["metadata"]["uid"]
    # as if it had learned that the model overrates its replicas: an attainment bias < 1
    learned = namespace.decision("chat") | {"ttft_scale": 0.5, "itl_scale": 0.5}
    patch = json.dumps({"data": {DECISION_KEY: json.dumps(learned)}})
    plane.kubectl("patch", "configmap", name_for(old), f"--namespace={NAMESPACE}", f"--patch={patch}")
    assert namespace.decision("chat")["ttft_scale"] == 0.5
    plane.kubectl("delete", "inferenceservice", "chat", f"--namespace={namespace.name}")
    namespace.create_isvc("chat", CHAT)  # made again: the server gives it a new uid
    new = namespace.isvc("chat")["metadata"]
    assert new["uid"] != old
    collector.observations = {(namespace.name, "chat"): observed(2.0)}
    second = await namespace.controller(collector)  # a restart: resumes from the cluster only
    try:
        assert not namespace.mine(await second.cycle())
        gone = plane.kubectl("get", "configmap", name_for(old), f"--namespace={NAMESPACE}", check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr  # deleted by the controller's own Role
        assert namespace.decision("chat")["ttft_scale"] == 1.0  # the namesake starts afresh
        assert ann.LEGACY_DECISION not in new["annotations"]
    finally:
        await stop(second)
