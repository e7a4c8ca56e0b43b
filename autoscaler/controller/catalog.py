"""The optimizer's static data from a ConfigMap, the GPU capacity the cluster's Nodes offer, and
the replicas of each ISVC ready to serve.

The ConfigMap holds Inferno's data files under their file names (accelerator-data.json,
model-data.json, serviceclass-data.json, optional optimizer-data.json) and, optionally,
gpu-products.json mapping a node's GPU product label to an accelerator type (for products whose
name does not contain the type, e.g. {"Tesla-V100-SXM2-16GB": "V100"}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..errors import InputError
from ..kserve import COMPONENT_LABEL, GPU_PRODUCT_LABEL, ISVC_LABEL, PREDICTOR, REVISION_LABEL
from ..optimizer.domain import Catalog
from ..resources import finished, node_allocatable, pod_requests, schedulable
from .knative import is_ready_pod
from ..optimizer.loader import SECTIONS, Node, catalog_from_sections, parse_json

# the Deployment controller's label on its ReplicaSets' pods, one value per pod template
POD_TEMPLATE_HASH = "pod-template-hash"

GPU_PRODUCTS_KEY = "gpu-products.json"
STATIC_SECTIONS = {"acceleratordata", "modeldata", "serviceclassdata"}


@dataclass(frozen=True)
class ClusterData:
    catalog: Catalog
    gpu_products: Mapping[str, str]  # node product label -> accelerator type


def cluster_data(configmap: dict, source: str) -> ClusterData:
    """Parse the ConfigMap; an InputError names the key and field at fault."""
    data = configmap.get("data") or {}
    sections = {}
    for key, file_name in SECTIONS.items():
        if key not in STATIC_SECTIONS | {"optimizerdata"}:
            continue
        if file_name not in data:
            if key in STATIC_SECTIONS:
                raise InputError(source, f"data.{file_name}", "missing")
            continue
        where = f"{source} data.{file_name}"
        sections[key] = Node(parse_json(data[file_name], where), where)
    products = {}
    if GPU_PRODUCTS_KEY in data:
        where = f"{source} data.{GPU_PRODUCTS_KEY}"
        products = json_object(data[GPU_PRODUCTS_KEY], where)
        for product, gpu_type in products.items():
            if not isinstance(gpu_type, str):
                raise InputError(where, product, f"expected an accelerator type (a string), got {gpu_type!r}")
    return ClusterData(catalog_from_sections(sections), products)


def json_object(text: str, where: str) -> dict:
    try:
        value = json.loads(text)  # product labels are case-sensitive: no key folding here
    except json.JSONDecodeError as exc:
        raise InputError(where, f"line {exc.lineno} column {exc.colno}", f"malformed JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise InputError(where, "(top level)", "expected an object of product label -> accelerator type")
    return value


def gpu_type_of(product: str, types: Iterable[str], explicit: Mapping[str, str]) -> str | None:
    """The accelerator type of a node's GPU product label: the mapping, else the longest type
    that is one of the label's dash-separated words ("NVIDIA-H100-80GB-HBM3" -> "H100";
    "L40S" is not "L4")."""
    if product in explicit:
        return explicit[product]
    words = set(re.split(r"[-_ ]", product.upper()))
    matches = [t for t in types if t.upper() in words]
    return max(matches, key=len) if matches else None


def node_gpu_types(nodes: Iterable[dict], data: ClusterData) -> dict[str, str]:
    """Node name -> accelerator type, for Ready schedulable nodes with a known GPU product."""
    types = {a.type for a in data.catalog.accelerators.values()}
    result = {}
    for node in nodes:
        metadata = node.get("metadata") or {}
        product = (metadata.get("labels") or {}).get(GPU_PRODUCT_LABEL)
        gpu_type = gpu_type_of(product, types, data.gpu_products) if product else None
        if gpu_type and schedulable(node):
            result[metadata["name"]] = gpu_type
    return result


def available_capacity(
    nodes: Iterable[dict],
    types: Mapping[str, str],
    pods: Iterable[dict],
    managed: Callable[[dict], bool],
    reserved: Mapping[str, int],
) -> dict[str, int]:
    """GPUs per accelerator type the optimizer may hand out; `types` is node_gpu_types(nodes).

    The optimizer places every managed ISVC afresh, so the pods it places (`managed`,
    placed_afresh) do not reduce capacity; pods of other workloads bound to a node do, and so do
    `reserved` GPUs (pod groups of new revisions being admitted, which run beside the old
    revision until it drains). With `managed` always false: the GPUs no pod holds now.
    """
    capacity: dict[str, int] = {}
    for node in nodes:
        name = node["metadata"]["name"]
        if name in types:
            capacity[types[name]] = capacity.get(types[name], 0) + node_allocatable(node).gpu
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name in types and not finished(pod) and not managed(pod):
            capacity[types[node_name]] -= pod_requests(pod).gpu
    for gpu_type, count in reserved.items():
        if gpu_type in capacity:
            capacity[gpu_type] -= count
    return {gpu_type: max(count, 0) for gpu_type, count in capacity.items()}


def placed_afresh(pod: dict, latest: Mapping[tuple[str, str], str | None]) -> bool:
    """Whether the optimizer places this pod's GPUs anew: a pod of a managed ISVC (`latest` maps
    each to its predictor's latest created revision) and of that revision. A superseded revision's
    pods, serving until the new one is Ready or draining, hold their GPUs meanwhile: those are not
    offered again (policy/rollout.py). Without a revision known (Standard mode, or KServe has not
    reported one yet) every pod of the ISVC is placed anew."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    key = ((pod.get("metadata") or {}).get("namespace", ""), labels.get(ISVC_LABEL, ""))
    if key not in latest:
        return False
    newest, revision = latest[key], labels.get(REVISION_LABEL)
    return newest is None or revision is None or revision == newest


def pod_binding(pods: Iterable[dict]) -> dict[tuple[str, str], tuple[int, int]]:
    """Per ISVC, its predictor pods bound to a node (holding their GPUs) and those no node has
    taken yet (waiting for a GPU), as the HPA's scale-down finds them (planner._unbound_released).
    A pod being deleted or finished is no longer the ReplicaSet's and is not counted. An ISVC
    is left out (unknown) where its pods are of more than one revision or ReplicaSet (the
    Knative revision label, the Deployment's pod-template-hash: a roll-out in flight, whose
    scale-down the Deployment shares between the two) or any of them carries a scheduling gate
    (a pod group the gang admission holds until it fits: not the HPA's to let go)."""
    found: dict[tuple[str, str], tuple[int, int]] = {}
    versions: dict[tuple[str, str], set] = {}
    gated: set[tuple[str, str]] = set()
    for pod in pods:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        key = predictor_of(pod)
        if key is None or meta.get("deletionTimestamp") or finished(pod):
            continue
        labels = meta["labels"]
        versions.setdefault(key, set()).add((labels.get(REVISION_LABEL), labels.get(POD_TEMPLATE_HASH)))
        if spec.get("schedulingGates"):
            gated.add(key)
        bound, unbound = found.get(key, (0, 0))
        found[key] = (bound + 1, unbound) if spec.get("nodeName") else (bound, unbound + 1)
    return {key: counts for key, counts in found.items() if key not in gated and len(versions[key]) == 1}


def ready_replicas(pods: Iterable[dict]) -> dict[tuple[str, str], int]:
    """Ready predictor pods per (namespace, ISVC), of every revision: the replicas that served
    the last window, which the planner learns per replica from (the simulator counts its ready
    replicas alike; predictor_of); a pod counts once its Ready condition is True and it is not
    being deleted, as the Deployment's readyReplicas and the endpoints count it. An ISVC with no
    such pod at all is left out (unknown: the planner takes its last decision's count), not 0."""
    ready: dict[tuple[str, str], int] = {}
    for pod in pods:
        if (key := predictor_of(pod)) is not None:
            ready[key] = ready.get(key, 0) + is_ready_pod(pod)
    return ready


def predictor_of(pod: dict) -> tuple[str, str] | None:
    """The (namespace, ISVC) whose predictor the pod is a replica of, or None: KServe labels a
    predictor's pods with the ISVC's name and component `predictor` in both modes (the
    Deployment's or the Knative revision's pod template, predictor.go buildObjectMeta)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if not labels.get(ISVC_LABEL) or labels.get(COMPONENT_LABEL) != PREDICTOR:
        return None
    return meta.get("namespace", ""), labels[ISVC_LABEL]
