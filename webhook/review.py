"""AdmissionReview v1 decisions, pure: a parsed review in, the response review out.

InferenceServices that opt in (annotations.py) are validated, then defaulted with the smallest
JSONPatch that reaches the desired state, so a second pass (reinvocation) patches nothing:
our Knative autoscaler class (or KServe's "external" autoscaler in Standard mode, formerly
RawDeployment: KServe then makes no HPA and leaves replicas to the controller's), the model
name, replica bounds from the service class on the annotations and on spec.predictor.
Pods of a revision of a managed ISVC get, at creation, a scheduling gate and a pod-group label
(the revision), so no GPU is taken until the gang admission controller lifts the gate.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Mapping

from autoscaler.annotations import (
    ENABLED,
    KNATIVE_CLASS,
    MAX_REPLICAS,
    MIN_REPLICAS,
    MODEL,
    OUR_KNATIVE_CLASS,
    POD_GROUP,
    SERVICE_CLASS,
    ClassDefaults,
    check,
)
from autoscaler.kserve import DEFAULT_MODE, DEPLOYMENT_MODE, KSERVE_AUTOSCALER_CLASS, REVISION_LABEL, STANDARD, deployment_mode

from . import bounded_json

GROUP_LABEL = POD_GROUP
SCHEDULING_GATE = POD_GROUP


class MalformedReview(ValueError):
    """The body is not an AdmissionReview we can answer; the message says why."""


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def _set(parent: dict, key: str) -> str:
    """The JSONPatch op that sets `key` of `parent`, whether or not it is there (null, empty)."""
    return "replace" if key in parent else "add"


def _response(uid: str, allowed: bool, patch: list | None = None, warnings=(), message: str = "", code: int = 200) -> dict:
    response: dict[str, Any] = {"uid": uid, "allowed": allowed}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
    if warnings:
        response["warnings"] = list(warnings)
    if not allowed:
        response["status"] = {"code": code, "reason": "Invalid" if code == 422 else "Forbidden", "message": message}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def _object(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedReview(f"{where} must be an object")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    mapping = _object(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise MalformedReview(f"{where} must map strings to strings")
    return mapping


def parse(body: bytes) -> dict:
    """The `request` of an AdmissionReview v1, checked enough to answer it safely."""
    try:
        review = bounded_json.loads(body)
    except bounded_json.TooComplex as exc:
        raise MalformedReview(f"body refused unparsed: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise MalformedReview(f"body is not JSON: {exc}") from None
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise MalformedReview("body is not an AdmissionReview")
    if review.get("apiVersion") != "admission.k8s.io/v1":
        raise MalformedReview(f"unsupported apiVersion {review.get('apiVersion')!r}: admission.k8s.io/v1 only")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise MalformedReview("AdmissionReview.request.uid is missing")
    _object(request.get("kind"), "request.kind")
    _object(request.get("object"), "request.object")
    return request


def _isvc_patch(isvc: dict, annotations: Mapping[str, str], defaults: ClassDefaults) -> list[dict]:
    desired = {
        MODEL: annotations.get(MODEL) or str(_object(isvc.get("metadata"), "metadata").get("name", "")),
        MIN_REPLICAS: annotations.get(MIN_REPLICAS, str(defaults.min_replicas)).strip(),
        MAX_REPLICAS: annotations.get(MAX_REPLICAS, str(defaults.max_replicas)).strip(),
    }
    if deployment_mode(isvc) == STANDARD:
        if annotations.get(KSERVE_AUTOSCALER_CLASS) != "keda":  # KServe's ScaledObject scales on our figures
            desired[KSERVE_AUTOSCALER_CLASS] = "external"  # KServe makes no HPA: the controller (or KEDA) does
    else:
        desired[KNATIVE_CLASS] = OUR_KNATIVE_CLASS
    if not desired[MODEL]:
        del desired[MODEL]  # generateName without a name: the controller falls back to the ISVC name
    # an ISVC that opted in has annotations already: each key is added or replaced on its own
    patch = [
        {"op": _set(annotations, key), "path": _pointer("metadata", "annotations", key), "value": value}
        for key, value in desired.items()
        if annotations.get(key) != value
    ]
    spec = _object(isvc.get("spec"), "spec")
    predictor = _object(spec.get("predictor"), "spec.predictor")
    bounds = {"minReplicas": int(desired[MIN_REPLICAS]), "maxReplicas": int(desired[MAX_REPLICAS])}
    # a member that is there but null is replaced whole: a patch below it would have no parent
    if isvc.get("spec") is None:
        patch.append({"op": _set(isvc, "spec"), "path": "/spec", "value": {"predictor": bounds}})
    elif spec.get("predictor") is None:
        patch.append({"op": _set(spec, "predictor"), "path": "/spec/predictor", "value": bounds})
    else:
        for key, value in bounds.items():
            if predictor.get(key) != value:
                patch.append({"op": _set(predictor, key), "path": _pointer("spec", "predictor", key), "value": value})
    return patch


def review_isvc(request: dict, classes: Mapping[str, ClassDefaults]) -> dict:
    uid = request["uid"]
    if request.get("operation") not in ("CREATE", "UPDATE"):
        return _response(uid, True)
    isvc = _object(request.get("object"), "request.object")
    annotations = _string_map(_object(isvc.get("metadata"), "request.object.metadata").get("annotations"), "metadata.annotations")
    findings = check(annotations, classes)
    if findings.errors:
        return _response(uid, False, warnings=findings.warnings, message="; ".join(findings.errors), code=422)
    if annotations.get(ENABLED) != "true":
        return _response(uid, True, warnings=findings.warnings)
    defaults = classes[annotations[SERVICE_CLASS]]
    warnings = list(findings.warnings)
    if DEPLOYMENT_MODE not in annotations and not (_object(isvc.get("status"), "status")).get("deploymentMode"):
        warnings.append(
            f"{DEPLOYMENT_MODE} not set: taken as {DEFAULT_MODE} (KServe's shipped default); "
            f"set it to Standard or Knative if this cluster's default differs"
        )
    return _response(uid, True, _isvc_patch(isvc, annotations, defaults), warnings)


def review_pod(request: dict) -> dict:
    uid = request["uid"]
    pod = _object(request.get("object"), "request.object")
    metadata = _object(pod.get("metadata"), "request.object.metadata")
    labels = _string_map(metadata.get("labels"), "metadata.labels")
    annotations = _string_map(metadata.get("annotations"), "metadata.annotations")
    revision = labels.get(REVISION_LABEL)
    # gates can only be set when a pod is created; pods of unmanaged ISVCs are left alone
    if request.get("operation") != "CREATE" or not revision or annotations.get(ENABLED) != "true":
        return _response(uid, True)
    patch = []
    if labels.get(GROUP_LABEL) != revision:  # the revision label is there, so labels exist
        patch.append({"op": _set(labels, GROUP_LABEL), "path": _pointer("metadata", "labels", GROUP_LABEL), "value": revision})
    spec = _object(pod.get("spec"), "request.object.spec")
    gates = spec.get("schedulingGates") or []
    if not isinstance(gates, list):
        raise MalformedReview("spec.schedulingGates must be a list")
    if not any(isinstance(g, dict) and g.get("name") == SCHEDULING_GATE for g in gates):
        gate = {"name": SCHEDULING_GATE}
        if gates:
            patch.append({"op": "add", "path": "/spec/schedulingGates/-", "value": gate})
        elif pod.get("spec") is None:
            patch.append({"op": _set(pod, "spec"), "path": "/spec", "value": {"schedulingGates": [gate]}})
        else:
            patch.append({"op": _set(spec, "schedulingGates"), "path": "/spec/schedulingGates", "value": [gate]})
    return _response(uid, True, patch)


def review(request: dict, classes: Mapping[str, ClassDefaults]) -> dict:
    kind = _object(request.get("kind"), "request.kind")
    if kind.get("group") == "serving.kserve.io" and kind.get("kind") == "InferenceService":
        return review_isvc(request, classes)
    if kind.get("group", "") == "" and kind.get("kind") == "Pod":
        return review_pod(request)
    return _response(request["uid"], True)
