"""Whether a pod group fits the cluster now: per-node first-fit of GPU, CPU and memory requests
over what each node has left. Pure.

What a node has left = allocatable - requests of pods bound to it - pods of groups already
admitted but not yet bound (the scheduler will put them somewhere; we count them where our
placement put them). The check respects what would stop the scheduler placing a pod there: the
node not Ready or cordoned, nodeSelector, required node affinity (In, NotIn, Exists,
DoesNotExist, Gt, Lt) and NoSchedule/NoExecute taints without a toleration. It is a necessary
check, not the scheduler's decision: pod affinity and topology spread are not modelled.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..resources import Resources, finished, node_allocatable, pod_requests, schedulable


def _expression_holds(expression: dict, labels: Mapping[str, str]) -> bool:
    key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    if operator in ("Gt", "Lt") and key in labels and values:
        try:
            left, right = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return left > right if operator == "Gt" else left < right
    return False


def _tolerated(taint: dict, tolerations: list[dict]) -> bool:
    for toleration in tolerations:
        if toleration.get("effect") and toleration.get("effect") != taint.get("effect"):
            continue
        if toleration.get("operator") == "Exists" and toleration.get("key") in (None, "", taint.get("key")):
            return True
        if toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get("value", ""):
            return True
    return False


def pod_may_run_on(pod: dict, node: dict) -> bool:
    spec = pod.get("spec") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms and not any(all(_expression_holds(e, labels) for e in t.get("matchExpressions") or []) for t in terms):
        return False
    tolerations = spec.get("tolerations") or []
    taints = (node.get("spec") or {}).get("taints") or []
    return all(_tolerated(t, tolerations) for t in taints if t.get("effect") in ("NoSchedule", "NoExecute"))


def free_resources(
    nodes: Iterable[dict], bound_pods: Iterable[dict], held: Iterable[tuple[str, Resources]]
) -> dict[str, Resources]:
    """What each schedulable node has left after bound pods and `held` (node, resources) pairs."""
    free = {n["metadata"]["name"]: node_allocatable(n) for n in nodes if schedulable(n)}
    for pod in bound_pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name in free and not finished(pod):
            free[node_name] = free[node_name] - pod_requests(pod)
    for node_name, resources in held:
        if node_name in free:
            free[node_name] = free[node_name] - resources
    return free


def first_fit(pods: list[dict], nodes: Mapping[str, dict], free: Mapping[str, Resources]) -> dict[str, str] | None:
    """Pod name -> node for the whole group, or None when some pod does not fit.

    First-fit decreasing: the largest pods (GPUs first) take the first node, in name order,
    with room; a group that fits this way fits the scheduler's packing too in the common case
    of equal pods, which a revision's are.
    """
    left = dict(free)
    placement = {}
    ordered = sorted(pods, key=lambda p: (pod_requests(p).gpu, pod_requests(p).cpu_m, pod_requests(p).memory), reverse=True)
    for pod in ordered:
        wanted = pod_requests(pod)
        for name in sorted(left):
            if wanted.fits_in(left[name]) and pod_may_run_on(pod, nodes[name]):
                left[name] = left[name] - wanted
                placement[pod["metadata"]["name"]] = name
                break
        else:
            return None
    return placement
