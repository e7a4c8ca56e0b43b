"""Kubernetes objects as KServe, Knative and the kubelet would write them, for controller tests."""

from __future__ import annotations

import json

from autoscaler import annotations as ann
from autoscaler.cli import embedded_problem
from autoscaler.controller.catalog import GPU_PRODUCTS_KEY
from autoscaler.controller.decision_store import DECISION_KEY, name_for
from autoscaler.kserve import (
    DEPLOYMENT_MODE,
    GPU_PRODUCT_LABEL,
    GPU_RESOURCE,
    ISVC_LABEL,
    KSERVE_AUTOSCALER_CLASS,
    RAW_DEPLOYMENT,
    REVISION_LABEL,
)
from autoscaler.optimizer.loader import SECTIONS


ISVCS = "apis/serving.kserve.io/v1beta1/inferenceservices"
HPAS = "apis/autoscaling/v2/horizontalpodautoscalers"
PAS = "apis/autoscaling.internal.knative.dev/v1alpha1/podautoscalers"
CONFIGMAPS = "api/v1/configmaps"
NODES = "api/v1/nodes"
PODS = "api/v1/pods"
NAMESPACE = "inference-autoscaler"


def stored_decision(store, isvc_obj: dict) -> dict | None:
    """The decision the controller stored for this ISVC (in our namespace, by the ISVC's uid)."""
    found = store.get(CONFIGMAPS, NAMESPACE, name_for(isvc_obj["metadata"]["uid"]))
    return None if found is None else json.loads(found["data"][DECISION_KEY])


def data_configmap(products: dict[str, str] | None = None) -> dict:
    """The embedded Inferno sample's static files as the controller's data ConfigMap."""
    data = {}
    for key, file_name in SECTIONS.items():
        if key in ("acceleratordata", "modeldata", "serviceclassdata", "optimizerdata"):
            data[file_name] = (embedded_problem() / file_name).read_text()
    if products:
        data[GPU_PRODUCTS_KEY] = json.dumps(products)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "inference-autoscaler-data", "namespace": NAMESPACE},
        "data": data,
    }


def node(name: str, product: str, gpus: int, ready: bool = True) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {GPU_PRODUCT_LABEL: product}},
        "status": {
            "allocatable": {GPU_RESOURCE: str(gpus), "cpu": "64", "memory": "512Gi"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def isvc(name: str, model: str, service_class: str = "Premium", raw: bool = True, namespace: str = "prod", **extra: str) -> dict:
    annotations = {
        ann.ENABLED: "true",
        ann.SERVICE_CLASS: service_class,
        ann.MODEL: model,
        ann.MIN_REPLICAS: "1",
        ann.MAX_REPLICAS: "20",
    }
    if raw:  # as our webhook leaves it
        annotations[DEPLOYMENT_MODE] = RAW_DEPLOYMENT
        annotations[KSERVE_AUTOSCALER_CLASS] = "external"
    annotations.update({ann.PREFIX + k.replace("_", "-"): v for k, v in extra.items()})
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "huggingface"}, "args": ["--model_name", model]}}},
    }


def pod_autoscaler(isvc_name: str, revision: str, namespace: str = "prod") -> dict:
    return {
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
        "kind": "PodAutoscaler",
        "metadata": {
            "name": revision,
            "namespace": namespace,
            "generation": 1,
            "labels": {ISVC_LABEL: isvc_name, REVISION_LABEL: revision},
            "annotations": {ann.KNATIVE_CLASS: ann.OUR_KNATIVE_CLASS},
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{revision}-deployment"},
            "protocolType": "http1",
        },
    }


def gpu_pod(name: str, node_name: str | None, gpus: int, namespace: str = "other", labels: dict | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "resources": {"limits": {GPU_RESOURCE: str(gpus)}}}]},
        "status": {"phase": "Running" if node_name else "Pending"},
    }
