"""Names KServe and Knative give to their objects, labels and annotations, in one place."""

from __future__ import annotations

from .annotations import SCALER

DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
# KServe >= 0.16 names the modes Standard and Knative; its defaulting webhook rewrites the old
# names, which older releases (and ISVCs stored before an upgrade) still carry
STANDARD, KNATIVE, MODEL_MESH = "Standard", "Knative", "ModelMesh"
RAW_DEPLOYMENT, SERVERLESS = "RawDeployment", "Serverless"
MODES = {STANDARD: STANDARD, RAW_DEPLOYMENT: STANDARD, KNATIVE: KNATIVE, SERVERLESS: KNATIVE, MODEL_MESH: MODEL_MESH}
DEFAULT_MODE = KNATIVE  # `deploy.defaultDeploymentMode` of KServe's shipped inferenceservice-config
KSERVE_AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
ISVC_LABEL = "serving.kserve.io/inferenceservice"
REVISION_LABEL = "serving.knative.dev/revision"
COMPONENT_LABEL, PREDICTOR = "component", "predictor"  # KServe's label on each component's revisions
MIN_SCALE = "autoscaling.knative.dev/min-scale"
INITIAL_SCALE = "autoscaling.knative.dev/initial-scale"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MANAGED_BY = ("app.kubernetes.io/managed-by", "inference-autoscaler")


def deployment_mode(isvc: dict, default: str = DEFAULT_MODE) -> str:
    """Standard, Knative or ModelMesh, as KServe decides it: `status.deploymentMode` (what KServe
    recorded; authoritative once set), else the annotation, else the cluster's default. Old names
    are read as the new ones; an unknown value is returned as it is."""
    recorded = (isvc.get("status") or {}).get("deploymentMode")
    if recorded:
        return MODES.get(recorded, recorded)
    annotated = ((isvc.get("metadata") or {}).get("annotations") or {}).get(DEPLOYMENT_MODE)
    if annotated:
        return MODES.get(annotated, annotated)
    return MODES.get(default, default)


def scaled_by_keda(isvc: dict) -> bool:
    """Whether a KEDA ScaledObject scales this Standard ISVC's Deployment: KServe's own (autoscalerClass
    keda) or one of the cluster's (our `scaler: keda`). Our HPA would then fight KEDA's."""
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    return annotations.get(KSERVE_AUTOSCALER_CLASS) == "keda" or annotations.get(SCALER) == "keda"


def latest_created_revision(isvc: dict) -> str | None:
    """The predictor's newest Knative revision, as KServe reports it
    (`status.components.predictor.latestCreatedRevision`); None before it does, or in Standard mode."""
    components = (isvc.get("status") or {}).get("components") or {}
    return (components.get(PREDICTOR) or {}).get("latestCreatedRevision") or None


def predictor_deployment(isvc: dict) -> str:
    """The Deployment KServe makes for a Standard-mode ISVC's predictor: `{isvc}-predictor`, or
    `{isvc}-{name}-predictor` when the predictor is named (`spec.predictor.name`)."""
    isvc_name = (isvc.get("metadata") or {}).get("name", "")
    named = ((isvc.get("spec") or {}).get("predictor") or {}).get("name")
    return f"{isvc_name}-{named}-predictor" if named else f"{isvc_name}-predictor"
