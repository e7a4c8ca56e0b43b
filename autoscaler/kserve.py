"""Names KServe and Knative give to their objects, labels and annotations, in one place."""

from __future__ import annotations

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
RAW_DEPLOYMENT = "RawDeployment"
KSERVE_AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
REVISION_LABEL = "serving.knative.dev/revision"
MIN_SCALE = "autoscaling.knative.dev/min-scale"
INITIAL_SCALE = "autoscaling.knative.dev/initial-scale"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MANAGED_BY = ("app.kubernetes.io/managed-by", "inference-autoscaler")


def is_raw_deployment(isvc: dict) -> bool:
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    return annotations.get(DEPLOYMENT_MODE) == RAW_DEPLOYMENT


def raw_predictor_deployment(isvc_name: str) -> str:
    """The Deployment KServe creates for a RawDeployment ISVC's predictor."""
    return f"{isvc_name}-predictor"
