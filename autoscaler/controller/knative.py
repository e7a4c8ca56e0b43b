"""Our Knative autoscaler class: what a PodAutoscaler of class
`optimizer.autoscaling.inference-autoscaler.io` needs, as Knative's own HPA class does it: an
HPA for the revision, a ServerlessService in Serve mode (traffic straight to the pods, no
activator), and PA status (desired/actual scale, Active/Ready/SKSReady conditions). Pure builders.

Revisions are scaled by their PA's `spec.reachability` (Knative sets it from the routes): a
reachable predictor revision of a managed ISVC carries the ISVC's decision (a canary's previous
revision and, during a rollout, the old one keep serving at full size); an unreachable one is
retired (no HPA, zero replicas); any other revision of our class (transformer, explainer, an ISVC
not decided yet or no longer managed) is kept at least at its initial scale.
"""

from __future__ import annotations

from ..annotations import KNATIVE_CLASS, OUR_KNATIVE_CLASS
from ..kserve import COMPONENT_LABEL, INITIAL_SCALE, ISVC_LABEL, MANAGED_BY, MIN_SCALE, PREDICTOR, REVISION_LABEL
from .manifests import owner_reference

SCALE_TARGET_INITIALIZED = "ScaleTargetInitialized"
DEFAULT_INITIAL_SCALE = 1  # config-autoscaler's initial-scale


def is_ours(pa: dict) -> bool:
    return ((pa.get("metadata") or {}).get("annotations") or {}).get(KNATIVE_CLASS) == OUR_KNATIVE_CLASS


def isvc_of(pa: dict) -> str | None:
    return ((pa.get("metadata") or {}).get("labels") or {}).get(ISVC_LABEL)


def revision_of(pa: dict) -> str:
    meta = pa.get("metadata") or {}
    return (meta.get("labels") or {}).get(REVISION_LABEL) or meta["name"]


def is_predictor(pa: dict) -> bool:
    """A predictor's revision (KServe labels each component's; no label: a plain revision)."""
    return ((pa.get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL, PREDICTOR) == PREDICTOR


def is_reachable(pa: dict) -> bool:
    """Whether a route may send the revision traffic: Knative's `spec.reachability`, set from the
    route's traffic targets (a canary's previous revision too); Unknown (a new revision not yet
    routed) counts as reachable, as in Knative's own scale bounds."""
    return (pa.get("spec") or {}).get("reachability") != "Unreachable"


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
        # no numActivators: 0 is its Go zero value (omitempty), which Knative's webhook strips from
        # what we write, so a 0 here would read as drift every cycle
        "spec": {
            "mode": "Serve",
            "objectRef": spec.get("scaleTargetRef"),
            "protocolType": spec.get("protocolType", "http1"),
        },
    }


def _condition(obj: dict | None, kind: str) -> str:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return c.get("status", "Unknown")
    return "Unknown"


def _scale_annotation(pa: dict, key: str, default: int) -> int:
    """A PA scale annotation; Knative's webhook validated it, a bad value reads as the default."""
    value = ((pa.get("metadata") or {}).get("annotations") or {}).get(key, "")
    return int(value) if value.isdigit() else default


def _min_scale(pa: dict) -> int:
    """min-scale from the PA's annotations, ignored for an unreachable revision (Knative's ScaleBounds)."""
    reachable = ((pa.get("spec") or {}).get("reachability")) != "Unreachable"
    return _scale_annotation(pa, MIN_SCALE, 0) if reachable else 0


def initial_scale_target(pa: dict) -> int:
    """How many ready pods a new revision needs before its scale target counts as initialized:
    max(min-scale, initial-scale) from the PA's annotations (initial-scale defaulting to 1, as
    config-autoscaler's)."""
    return max(_min_scale(pa), _scale_annotation(pa, INITIAL_SCALE, DEFAULT_INITIAL_SCALE))


def is_ready_pod(pod: dict) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or [])


def pa_status(pa: dict, desired: int, ready_pods: int, sks: dict | None) -> dict:
    """The PA status Knative's revision reconciler reads, by the PodAutoscaler contract: service
    names from the SKS; ScaleTargetInitialized once the SKS is Ready and enough pods are
    (initial_scale_target), and never reset after; Active when wanted and as many pods are ready
    as Knative's KPA asks (its activeThreshold: the initialization target until the scale
    target is initialized, max(min-scale, 1) after), Activating below that; Ready the AND of
    Active, ScaleTargetInitialized and SKSReady (Knative's living condition set)."""
    sks_ready = _condition(sks, "Ready")
    was_initialized = _condition(pa, SCALE_TARGET_INITIALIZED) == "True"
    enough = sks_ready == "True" and ready_pods >= initial_scale_target(pa)
    initialized = "True" if enough or was_initialized else "Unknown"
    # Knative's computeActiveCondition: one ready pod of a revision whose min-scale is 3 is
    # not Active, or the revision (and the route moving to it) would count as ready too early
    threshold = max(_min_scale(pa), 1) if was_initialized else initial_scale_target(pa)
    if desired == 0 or threshold == 0:
        active, active_reason = "False", "NoTraffic"
    elif ready_pods < threshold:
        active, active_reason = "Unknown", "Queued"
    else:
        active, active_reason = "True", ""
    statuses = (active, initialized, sks_ready)
    ready = "True" if all(s == "True" for s in statuses) else "False" if "False" in statuses else "Unknown"
    sks_status = (sks or {}).get("status") or {}
    return {
        "observedGeneration": (pa.get("metadata") or {}).get("generation", 0),
        "desiredScale": desired,
        "actualScale": ready_pods,
        "serviceName": sks_status.get("serviceName", ""),
        "metricsServiceName": sks_status.get("privateServiceName", ""),
        "conditions": [
            {"type": "Active", "status": active, "reason": active_reason},
            {"type": "SKSReady", "status": sks_ready, "reason": "" if sks_ready == "True" else "NotReady"},
            {"type": SCALE_TARGET_INITIALIZED, "status": initialized, "reason": "" if initialized == "True" else "Initializing"},
            {"type": "Ready", "status": ready, "reason": ""},
        ],
    }


def with_transition_times(pa: dict, status: dict, now_rfc3339: str) -> dict:
    """`status` with each condition's lastTransitionTime: kept where the status did not change."""
    before = {c.get("type"): c for c in (pa.get("status") or {}).get("conditions") or []}
    for c in status["conditions"]:
        old = before.get(c["type"])
        c["lastTransitionTime"] = (
            old["lastTransitionTime"]
            if old and old.get("status") == c["status"] and old.get("lastTransitionTime")
            else now_rfc3339
        )
    return status


def sks_drifted(sks: dict, wanted: dict) -> bool:
    """Whether someone changed what we set in the SKS spec (Knative adds nothing there)."""
    return any((sks.get("spec") or {}).get(k) != v for k, v in wanted["spec"].items())


def status_differs(pa: dict, wanted: dict) -> bool:
    current = pa.get("status") or {}
    strip = lambda conditions: [{k: c.get(k) for k in ("type", "status", "reason")} for c in conditions or []]  # noqa: E731
    return {k: v for k, v in current.items() if k != "conditions"} != {
        k: v for k, v in wanted.items() if k != "conditions"
    } or strip(current.get("conditions")) != strip(wanted["conditions"])
