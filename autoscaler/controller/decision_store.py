"""Where the controller keeps each ISVC's last decision (what a restarted controller resumes
from): one ConfigMap per ISVC in the controller's own namespace, named by the ISVC's uid.

Not on the ISVC: KServe copies every ISVC annotation that is not on its disallow list into the
Knative revision template and into the Standard Deployment's pod template, so each decision
written there made a new Revision or ReplicaSet (new GPU pods, gang admission, a model reload)
for what was only a replica change. Not in the ISVC's status either: KServe's reconciler owns
that and rewrites it from its own view. In our namespace tenants hold no RBAC, so a decision
cannot be forged or copied there (which the annotation needed an HMAC for). Named by uid, an ISVC
deleted and made again under the same name starts afresh; since an owner reference cannot
cross namespaces, the controller deletes the ConfigMap of an ISVC that no longer exists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..kserve import MANAGED_BY
from ..kube import CONFIG_MAPS, ApiError, Informer, Kube, with_retries

log = logging.getLogger(__name__)
COMPONENT = ("app.kubernetes.io/component", "decision")
SELECTOR = f"{MANAGED_BY[0]}={MANAGED_BY[1]},{COMPONENT[0]}={COMPONENT[1]}"
NOT_DECISIONS = f"{COMPONENT[0]}!={COMPONENT[1]}"  # the other ConfigMaps of our namespace
DECISION_KEY = "decision"
UID_LABEL = "inference-autoscaler.io/isvc-uid"


def name_for(uid: str) -> str:
    return f"decision-{uid}"


def configmap(namespace: str, isvc_meta: dict, decision: str) -> dict:
    uid = isvc_meta.get("uid", "")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name_for(uid),
            "namespace": namespace,
            "labels": {MANAGED_BY[0]: MANAGED_BY[1], COMPONENT[0]: COMPONENT[1], UID_LABEL: uid},
            # for people reading the namespace; the uid is what the controller matches on
            "annotations": {"inference-autoscaler.io/isvc": f"{isvc_meta.get('namespace', '')}/{isvc_meta.get('name', '')}"},
        },
        "data": {DECISION_KEY: decision},
    }


class DecisionStore:
    """The decision ConfigMaps, read from a watched cache and written through the API server."""

    def __init__(self, kube: Kube, informer: Informer, namespace: str):
        self.kube = kube
        self.informer = informer
        self.namespace = namespace

    def read(self, uid: str) -> tuple[str, str] | None:
        """(decision text, resourceVersion) of the ISVC with this uid; None when none was made."""
        found = self.informer.objects.get((self.namespace, name_for(uid))) if uid else None
        if found is None:
            return None
        text = (found.get("data") or {}).get(DECISION_KEY)
        return None if text is None else (text, found["metadata"].get("resourceVersion", ""))

    async def write(self, isvc_meta: dict, decision: str) -> None:
        wanted = configmap(self.namespace, isvc_meta, decision)
        name = wanted["metadata"]["name"]

        async def attempt() -> None:
            try:
                await self.kube.patch(CONFIG_MAPS, self.namespace, name, {"data": wanted["data"]})
            except ApiError as exc:
                if exc.status != 404:
                    raise
                await self.kube.create(CONFIG_MAPS, self.namespace, wanted)  # a 409 (made meanwhile) retries the patch

        await with_retries(attempt, f"decision of {isvc_meta.get('namespace')}/{isvc_meta.get('name')}")

    async def collect_garbage(self, live_uids: Iterable[str]) -> int:
        """Delete the decisions of ISVCs that are gone; returns how many."""
        live = set(live_uids)
        gone = [
            meta["name"]
            for meta in (cm["metadata"] for cm in list(self.informer.objects.values()))
            if (meta.get("labels") or {}).get(UID_LABEL) not in live
        ]
        for name in gone:
            try:
                await with_retries(lambda name=name: self.kube.delete(CONFIG_MAPS, self.namespace, name), f"delete {name}")
            except ApiError as exc:
                if exc.status != 404:
                    raise
        if gone:
            log.info("deleted %d decisions of InferenceServices that no longer exist", len(gone))
        return len(gone)
