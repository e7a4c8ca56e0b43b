"""What the controller writes, built as plain objects from plans. Pure: the actuator only sends
these and compares them with what the cluster holds."""

from __future__ import annotations

import copy
from collections.abc import Iterable

from ..kserve import GPU_PRODUCT_LABEL, GPU_RESOURCE, MANAGED_BY
from ..optimizer.domain import ServiceTarget
from ..proto import decisions_pb2 as pb
from ..policy.guards import SCALE_DOWN_WINDOW_S
from ..policy.planner import Outcome, Plan

CONDITION_TYPE = "AutoscalerDecision"
DESIRED_REPLICAS = "desired_replicas"


def decision_message(plan: Plan, slo: ServiceTarget, revision: str = "", replicas: int | None = None) -> pb.Decision:
    d = plan.decision
    ttft_slo, itl_slo = slo.ttft_ms, slo.itl_ms
    return pb.Decision(
        namespace=plan.service.namespace,
        isvc=plan.service.name,
        revision=revision,
        model=plan.service.model,
        accelerator=d.accelerator,
        service_class=plan.service.service_class,
        desired_replicas=d.replicas if replicas is None else replicas,
        max_batch=d.max_batch,
        arrival_rate=d.arrival_rate,
        cost_per_hour=d.cost,
        ttft_headroom=1.0 - d.ttft_ms / ttft_slo if ttft_slo else 0.0,
        itl_headroom=1.0 - d.itl_ms / itl_slo if itl_slo else 0.0,
        decided_at=d.decided_at,
        replica_capacity=d.replica_capacity,
        work_scale=d.work_scale,
        capacity_bias=d.ttft_scale if d.replica_capacity else 0.0,
        rate_variation=d.rate_variation,
        step_ms=d.step_ms,
        token_ms=d.token_ms,
        kv_token_ms=d.kv_token_ms,
    )


def owner_reference(obj: dict) -> dict:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def hpa(
    name: str,
    namespace: str,
    target: dict,
    selector: dict[str, str],
    bounds: tuple[int, int],
    owner: dict,
    tolerance: bool,
    scale_down_s: int | None = None,
) -> dict:
    """An autoscaling/v2 HPA on our desired-replicas figure: with averageValue 1 the HPA's
    desired count is the published figure itself; tolerance 0 (HPAConfigurableTolerance: beta and
    on from Kubernetes 1.35, alpha and off in 1.33-1.34; dropped by a server without it) keeps it
    from ignoring +-1 steps at ten replicas and more. `scale_down_s`: the plan's scale-down
    stabilisation (Plan.scale_down_s: shorter while a model with no profile is identified, none
    where every pod kept beyond the plan waits for a GPU), else SCALE_DOWN_WINDOW_S. The HPA
    controller reads the window in force at each sync and keeps its recommendations with their
    times (horizontal.go), so a window changed in place applies at the next sync, to the
    recommendations already made."""
    window = SCALE_DOWN_WINDOW_S if scale_down_s is None else scale_down_s
    behavior = {
        "scaleUp": {"stabilizationWindowSeconds": 0},
        "scaleDown": {"stabilizationWindowSeconds": window},
    }
    if tolerance:
        behavior["scaleUp"]["tolerance"] = "0"
        behavior["scaleDown"]["tolerance"] = "0"
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {MANAGED_BY[0]: MANAGED_BY[1]},
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "scaleTargetRef": target,
            "minReplicas": max(bounds[0], 1),
            "maxReplicas": max(bounds[1], 1),
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": DESIRED_REPLICAS, "selector": {"matchLabels": selector}},
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
            "behavior": behavior,
        },
    }


def hpa_differs(wanted: dict, current: dict | None) -> bool:
    return current is None or current.get("spec") != wanted["spec"]


# the condition's status for each outcome (Outcome's docstring)
CONDITION_STATUS = {
    Outcome.DECIDED: "True",
    Outcome.SCALED_TO_ZERO: "True",
    Outcome.BEST_EFFORT: "False",
    Outcome.CONSTRAINED: "False",
    Outcome.NO_PLACEMENT: "False",
    Outcome.STALE: "Unknown",
}


def condition(plan: Plan) -> dict:
    """The ISVC's AutoscalerDecision condition for a plan: its outcome as the reason, the decision
    and the plan's notes as the message. A plan with no decision says only why."""
    status, reason = CONDITION_STATUS[plan.outcome], plan.outcome.value
    d = plan.decision
    if d is None:
        return {"type": CONDITION_TYPE, "status": status, "reason": reason, "message": plan.reason}
    message = (
        f"{d.replicas} x {d.accelerator}, max batch {d.max_batch}; predicted TTFT {d.ttft_ms:.0f} ms, "
        f"ITL {d.itl_ms:.1f} ms at {d.arrival_rate:.2f} req/s"
    )
    if d.replica_capacity:
        learned = f"work scale {d.work_scale:.2f}, bias {d.ttft_scale:.2f}, rate variation {d.rate_variation:.2f}"
        learned += f"; step {d.step_ms:.2f} ms + {d.token_ms * 1000:.1f} us/token + {d.kv_token_ms * 1000:.3f} us/KV token"
        message += f"; latency model: {d.replica_capacity:.2f} req/s per replica ({learned})"
    if plan.reason:
        message += f" ({plan.reason})"
    return {"type": CONDITION_TYPE, "status": status, "reason": reason, "message": message}


def spec_patch(isvc: dict, plan: Plan, products: Iterable[str], gpus_per_replica: int) -> dict | None:
    """The merge patch rolling out a new GPU type or batch size (a new revision); None when the
    plan does not roll out. The decision itself is never written on the ISVC (decision_store.py)."""
    if plan.decision is None or not plan.roll_out:
        return None
    return {"spec": {"predictor": _predictor_patch(isvc, plan.decision.max_batch, sorted(products), gpus_per_replica)}}


def _predictor_patch(isvc: dict, max_batch: int, products: list[str], gpus: int) -> dict:
    predictor = copy.deepcopy((isvc.get("spec") or {}).get("predictor") or {})
    model = predictor.get("model") or {}
    args = [a for a in model.get("args") or [] if not a.startswith("--max-num-seqs")]
    resources = model.get("resources") or {}
    for kind in ("limits", "requests"):
        resources.setdefault(kind, {})[GPU_RESOURCE] = str(gpus)
    affinity = predictor.get("affinity") or {}
    required = affinity.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [{}])
    for term in terms:
        kept = [e for e in term.get("matchExpressions") or [] if e.get("key") != GPU_PRODUCT_LABEL]
        term["matchExpressions"] = kept + [{"key": GPU_PRODUCT_LABEL, "operator": "In", "values": products}]
    patch = {
        "model": {"args": args + [f"--max-num-seqs={max_batch}"], "resources": resources},
        "affinity": affinity,
    }
    if GPU_PRODUCT_LABEL in (predictor.get("nodeSelector") or {}):
        patch["nodeSelector"] = {GPU_PRODUCT_LABEL: None}  # the affinity says it now
    return patch
