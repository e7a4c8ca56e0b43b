"""Our Knative autoscaler class: what a PodAutoscaler of class
`optimizer.autoscaling.inference-autoscaler.io` needs, as Knative's own HPA class does it: an
HPA for the revision, a ServerlessService in Serve mode (traffic straight to the pods, no
activator), and PA status (desired/actual scale, Active/Ready/SKSReady conditions). Pure builders.

Revisions of one ISVC play roles: the latest created and the latest ready share the ISVC's
decision (during a rollout the old revision keeps serving at full size until the new one is
ready); any other revision is retired: no HPA, scaled to zero.
"""

from __future__ import annotations

from ..annotations import KNATIVE_CLASS, OUR_KNATIVE_CLASS
from ..kserve import ISVC_LABEL, MANAGED_BY, REVISION_LABEL
from .manifests import owner_reference


def is_ours(pa: dict) -> bool:
    return ((pa.get("metadata") or {}).get("annotations") or {}).get(KNATIVE_CLASS) == OUR_KNATIVE_CLASS


def isvc_of(pa: dict) -> str | None:
    return ((pa.get("metadata") or {}).get("labels") or {}).get(ISVC_LABEL)


def revision_of(pa: dict) -> str:
    meta = pa.get("metadata") or {}
    return (meta.get("labels") or {}).get(REVISION_LABEL) or meta["name"]


def serving_revisions(isvc: dict) -> set[str]:
    """The revisions that carry the decision: latest created and latest ready of the predictor."""
    predictor = ((isvc.get("status") or {}).get("components") or {}).get("predictor") or {}
    return {r for r in (predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")) if r}


def serverless_service(pa: dict) -> dict:
    meta = pa["metadata"]
    spec = pa.get("spec") or {}
    return {
        "apiVersion": "networking.internal.knative.dev/v1alpha1",
        "kind": "ServerlessService",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {**(meta.get("labels") or {}), MANAGED_BY[0]: MANAGED_BY[1]},
            "ownerReferences": [owner_reference(pa)],
        },
        "spec": {
            "mode": "Serve",
            "numActivators": 0,
            "objectRef": spec.get("scaleTargetRef"),
            "protocolType": spec.get("protocolType", "http1"),
        },
    }


def _ready(obj: dict | None) -> str:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status", "Unknown")
    return "Unknown"


def pa_status(pa: dict, desired: int, hpa: dict | None, sks: dict | None) -> dict:
    """The PA status Knative's revision reconciler reads."""
    actual = ((hpa or {}).get("status") or {}).get("currentReplicas")
    sks_ready = _ready(sks)
    active = "True" if desired > 0 else "False"
    ready = sks_ready if desired > 0 else "True"  # a retired revision is ready at zero
    status = {
        "observedGeneration": (pa.get("metadata") or {}).get("generation", 0),
        "desiredScale": desired,
        "actualScale": actual if actual is not None else 0,
        "serviceName": ((sks or {}).get("status") or {}).get("serviceName", ""),
        "metricsServiceName": "",
        "conditions": [
            {"type": "Active", "status": active, "reason": "" if desired else "Retired"},
            {"type": "SKSReady", "status": sks_ready},
            {"type": "ScaleTargetInitialized", "status": "True" if actual else "Unknown"},
            {"type": "Ready", "status": ready},
        ],
    }
    return status


def status_differs(pa: dict, wanted: dict) -> bool:
    current = pa.get("status") or {}
    strip = lambda conditions: [{k: c.get(k) for k in ("type", "status", "reason")} for c in conditions or []]  # noqa: E731
    return {k: v for k, v in current.items() if k != "conditions"} != {
        k: v for k, v in wanted.items() if k != "conditions"
    } or strip(current.get("conditions")) != strip(wanted["conditions"])
