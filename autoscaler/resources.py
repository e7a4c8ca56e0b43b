"""Kubernetes resource arithmetic: quantities, what pods request, what nodes offer."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .kserve import GPU_RESOURCE

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity(value: str | int | float | None, milli: bool = False) -> int:
    """A Kubernetes quantity as an integer (in thousandths when `milli`, for CPU)."""
    if value is None:
        return 0
    text = str(value).strip()
    match = re.fullmatch(r"([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", text)
    if not match:
        raise ValueError(f"unreadable quantity {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":
        return round(number) if milli else int(number // 1000)
    number *= _SUFFIX.get(suffix or "", 1)
    return round(number * 1000) if milli else int(number)


@dataclass(frozen=True)
class Resources:
    gpu: int = 0
    cpu_m: int = 0
    memory: int = 0

    def __add__(self, other: "Resources") -> "Resources":
        return Resources(self.gpu + other.gpu, self.cpu_m + other.cpu_m, self.memory + other.memory)

    def __sub__(self, other: "Resources") -> "Resources":
        return Resources(self.gpu - other.gpu, self.cpu_m - other.cpu_m, self.memory - other.memory)

    def fits_in(self, free: "Resources") -> bool:
        return self.gpu <= free.gpu and self.cpu_m <= free.cpu_m and self.memory <= free.memory


def _container_requests(container: dict) -> Resources:
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}

    def pick(name: str):  # a limit alone implies an equal request
        return requests.get(name, limits.get(name))

    return Resources(quantity(pick(GPU_RESOURCE)), quantity(pick("cpu"), milli=True), quantity(pick("memory")))


def pod_requests(pod: dict) -> Resources:
    """As the scheduler counts it: the sum over containers, at least the largest init container."""
    spec = pod.get("spec") or {}
    total = Resources()
    for container in spec.get("containers") or []:
        total = total + _container_requests(container)
    for init in spec.get("initContainers") or []:
        r = _container_requests(init)
        total = Resources(max(total.gpu, r.gpu), max(total.cpu_m, r.cpu_m), max(total.memory, r.memory))
    return total


def finished(pod: dict) -> bool:
    """A pod that has run to its end (Succeeded or Failed): it holds no resources any more (the
    scheduler's cache drops it) and is no longer one of its ReplicaSet's replicas."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def node_allocatable(node: dict) -> Resources:
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return Resources(
        quantity(allocatable.get(GPU_RESOURCE)), quantity(allocatable.get("cpu"), milli=True), quantity(allocatable.get("memory"))
    )


def schedulable(node: dict) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
