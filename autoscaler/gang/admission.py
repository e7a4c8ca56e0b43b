"""Gang admission of a new revision's pods: all of the group's scheduling gates go at once when
the whole minimum group fits, or the group fails at its progress deadline.

Pods gated by the webhook carry the pod-group label (their revision). Each pass:
1. groups that were being admitted (ledger entry "admitting") have every gate still on removed:
   this finishes an admission a crash interrupted, so a group ends all admitted or all gated;
2. a group with at least its minimum pods (max of Knative's min-scale and initial-scale, read
   from the revision's PodAutoscaler: Knative >= 1.21 no longer copies them to pods) that fits
   now (placement.first_fit over what nodes have left after bound pods and the groups admitted
   but not yet bound) is written to the ledger first, then ungated;
3. with `provision_after_s` set (a cluster with the Cluster Autoscaler, which ignores gated pods
   and so never adds nodes for them): a complete group that has not fitted for that long is
   ungated anyway ("provisioning"), its Pending pods being what the autoscaler scales up for;
4. a group not running past its deadline (the lower of our progress-deadline annotation and
   Knative's, so Knative never fails the revision first; counted from its oldest pod's creation)
   fails: its unbound pods are deleted, an Event is recorded, the ISVC gets a
   PodGroupAdmitted=False condition, and the ledger remembers the failure: pods the ReplicaSet
   makes again stay gated (holding nothing) while the old revision serves, and are admitted if
   the group fits later, never failed again.
The ISVC's PodGroupAdmitted condition says where its newest group stands: False while a complete
group waits because it does not fit (InsufficientCapacity: why its pods stay gated) or has been
ungated for the Cluster Autoscaler (Provisioning), or failed (ProgressDeadlineExceeded); True
once a group is admitted. Written when it changes, not every pass.

The ledger is one ConfigMap (our namespace), updated with its resourceVersion so two writers
never both win; entries leave it once all the group's pods are bound, or (failed) once the group
has no pods left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .. import annotations as ann
from ..kserve import GPU_PRODUCT_LABEL, INITIAL_SCALE, ISVC_LABEL, MIN_SCALE
from ..resources import Resources, pod_requests
from ..kube import CONFIG_MAPS, EVENTS, INFERENCE_SERVICES, PODS, ApiError, Informer, Kube, with_retries
from ..controller.conditions import rfc3339, write_condition
from ..controller.knative import initial_scale_target
from . import knative_config
from .knative_config import KnativeDeploymentConfig, duration_s
from .placement import first_fit, free_resources

log = logging.getLogger(__name__)
LEDGER = "inference-autoscaler-pod-groups"
CONDITION_TYPE = "PodGroupAdmitted"
CONFIG_REFRESH_S = 60.0


def gated(pod: dict) -> bool:
    return any(g.get("name") == ann.POD_GROUP for g in (pod.get("spec") or {}).get("schedulingGates") or [])


def group_of(pod: dict) -> tuple[str, str] | None:
    meta = pod.get("metadata") or {}
    group = (meta.get("labels") or {}).get(ann.POD_GROUP)
    return (meta.get("namespace", ""), group) if group else None


def _created(pod: dict) -> float:
    stamp = (pod.get("metadata") or {}).get("creationTimestamp") or "1970-01-01T00:00:00Z"
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _int_annotation(pod: dict, key: str, default: int) -> int:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(key)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def minimum_size(pods: list[dict], pa: dict | None) -> int:
    """Knative starts a revision with max(initial-scale (default 1), min-scale) pods: read from its
    PodAutoscaler; from the pods' annotations without one (Knative before 1.21 copied them there)."""
    if pa is not None:
        return initial_scale_target(pa)
    return max(max(_int_annotation(p, INITIAL_SCALE, 1), _int_annotation(p, MIN_SCALE, 0)) for p in pods)


def deadline_s(pods: list[dict], pa: dict | None, knative: KnativeDeploymentConfig) -> float:
    """Ours (the ISVC's progress-deadline annotation, on its pods), capped by Knative's for a
    Knative revision (its PA's serving.knative.dev/progress-deadline, else config-deployment's)."""
    ours = max(_int_annotation(p, ann.PROGRESS_DEADLINE, ann.DEFAULT_PROGRESS_DEADLINE_S) for p in pods)
    if pa is None:
        return ours
    annotated = ((pa.get("metadata") or {}).get("annotations") or {}).get(knative_config.REVISION_PROGRESS_DEADLINE, "")
    return min(ours, duration_s(annotated) or knative.progress_deadline_s)


@dataclass
class Outcome:
    admitted: list[str] = field(default_factory=list)  # "namespace/group"
    waiting: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    provisioning: list[str] = field(default_factory=list)


def _ledger_key(namespace: str, group: str) -> str:
    return f"{namespace}.{group}"  # ConfigMap keys allow [-._a-zA-Z0-9]


class GangAdmission:
    def __init__(
        self,
        kube: Kube,
        pods: Informer,
        nodes: Informer,
        namespace: str,
        clock: Callable[[], float] = time.time,
        node_types: Callable[[], Mapping[str, str]] = dict,
        pas: Informer | None = None,
        provision_after_s: float | None = None,
    ):
        self.kube = kube
        self.pods = pods
        self.nodes = nodes
        self.namespace = namespace
        self.clock = clock
        self.node_types = node_types  # node name -> accelerator type, for the optimizer's reservation
        self.pas = pas  # the revisions' PodAutoscalers (Knative), keyed like the groups
        self.provision_after_s = provision_after_s
        self.ledger: dict[str, dict] = {}
        self.knative = KnativeDeploymentConfig()
        self._knative_read_at = -CONFIG_REFRESH_S
        self._told: dict[tuple[str, str], tuple[str, str, str]] = {}  # (namespace, ISVC) -> condition written

    async def _read_knative_config(self) -> None:
        """config-deployment, every CONFIG_REFRESH_S; its problem logged when it changes."""
        now = self.clock()
        if now - self._knative_read_at < CONFIG_REFRESH_S:
            return
        self._knative_read_at = now
        try:
            found = await self.kube.find(CONFIG_MAPS, knative_config.NAMESPACE, knative_config.NAME)
        except ApiError as exc:
            log.warning("cannot read %s/%s (%s): Knative defaults assumed", knative_config.NAMESPACE, knative_config.NAME, exc)
            return
        config = (
            KnativeDeploymentConfig.from_configmap(found) if found else KnativeDeploymentConfig(pod_is_always_schedulable=True)
        )
        if config.problem and config != self.knative:
            log.error("%s", config.problem)
        self.knative = config  # no ConfigMap: no Knative here, nothing to check

    # --- the ledger ---

    async def _read_ledger(self) -> tuple[dict[str, dict], str]:
        try:
            configmap = await self.kube.get(CONFIG_MAPS, self.namespace, LEDGER)
        except ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": LEDGER, "namespace": self.namespace},
                "data": {},
            }
            try:
                configmap = await self.kube.create(CONFIG_MAPS, self.namespace, body)
            except ApiError as again:
                if again.status != 409:
                    raise
                configmap = await self.kube.get(CONFIG_MAPS, self.namespace, LEDGER)
        entries = {k: json.loads(v) for k, v in (configmap.get("data") or {}).items()}
        return entries, configmap["metadata"]["resourceVersion"]

    async def _update_ledger(self, change: Callable[[dict[str, dict]], None]) -> None:
        """Read, change, write with the resourceVersion: a concurrent writer makes it a 409, retried."""

        async def attempt() -> None:
            entries, version = await self._read_ledger()
            change(entries)
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": LEDGER, "namespace": self.namespace, "resourceVersion": version},
                "data": {k: json.dumps(v, sort_keys=True) for k, v in entries.items()},
            }
            await self.kube.replace(CONFIG_MAPS, self.namespace, LEDGER, body)
            self.ledger = entries

        await with_retries(attempt, "pod-group ledger")

    # --- one pass ---

    def reserved_gpus(self) -> dict[str, int]:
        """GPUs per accelerator type held for groups being admitted or waiting to be: the
        optimizer must not hand them to another ISVC meanwhile (old and new revision run
        side by side until the new one is ready)."""
        types = self.node_types()
        reserved: dict[str, int] = {}
        for entry in self.ledger.values():
            if entry.get("state") == "admitting":
                for node_name, gpus in entry.get("gpus_by_node", {}).items():
                    if node_name in types:
                        reserved[types[node_name]] = reserved.get(types[node_name], 0) + gpus
        admitting = {
            (key.partition(".")[0], name)
            for key, entry in self.ledger.items()
            if entry.get("state") == "admitting"
            for name in entry.get("pods", [])
        }
        # the type of each GPU product on a node of a known type, once for all pods
        type_of_product = {
            (n["metadata"].get("labels") or {}).get(GPU_PRODUCT_LABEL): types[n["metadata"]["name"]]
            for n in self.nodes.objects.values()
            if n["metadata"]["name"] in types
        }
        all_types = set(type_of_product.values())
        for pod in self.pods.objects.values():
            if (pod["metadata"].get("namespace"), pod["metadata"]["name"]) in admitting:
                continue  # counted above, where it was placed
            if gated(pod) and (wanted := pod_requests(pod).gpu):
                products = _wanted_products(pod)
                candidates = {type_of_product[p] for p in products if p in type_of_product} if products else set(all_types)
                if len(candidates) == 1:
                    gpu_type = candidates.pop()
                    reserved[gpu_type] = reserved.get(gpu_type, 0) + wanted
        return reserved

    async def reconcile(self) -> Outcome:
        outcome = Outcome()
        await self._read_knative_config()
        self.ledger, _ = await self._read_ledger()
        groups: dict[tuple[str, str], list[dict]] = {}
        for pod in self.pods.objects.values():
            key = group_of(pod)
            if key is not None:
                groups.setdefault(key, []).append(pod)
        await self._finish_interrupted(groups, outcome)
        await self._forget_settled(groups)
        held = [
            (node_name, Resources(**resources))
            for entry in self.ledger.values()
            if entry.get("state") == "admitting"
            for node_name, resources in entry.get("held", [])
        ]
        free = free_resources(
            self.nodes.objects.values(), (p for p in self.pods.objects.values() if (p.get("spec") or {}).get("nodeName")), held
        )
        nodes = {n["metadata"]["name"]: n for n in self.nodes.objects.values()}
        now = self.clock()
        for (namespace, group), pods in sorted(groups.items(), key=lambda item: min(_created(p) for p in item[1])):
            waiting = [p for p in pods if gated(p)]
            entry = self.ledger.get(_ledger_key(namespace, group))
            state = (entry or {}).get("state")
            pa = self.pas.objects.get((namespace, group)) if self.pas is not None else None
            name = f"{namespace}/{group}"
            if state == "provisioning":
                unbound = [p for p in pods if not (p.get("spec") or {}).get("nodeName")]
                if unbound and now - min(_created(p) for p in pods) > deadline_s(pods, pa, self.knative):
                    await self._fail(namespace, group, unbound, deadline_s(pods, pa, self.knative), now)
                    outcome.failed.append(name)
                continue
            if not waiting or state == "admitting":
                continue
            if len(waiting) < len(pods) and state != "failed":  # the group runs: a scale-up pod joins alone when it fits
                for pod in waiting:
                    if (spot := first_fit([pod], nodes, free)) is not None:
                        await self._ungate(namespace, pod["metadata"]["name"])
                        free[spot[pod["metadata"]["name"]]] -= pod_requests(pod)
                        outcome.admitted.append(f"{name}/{pod['metadata']['name']}")
                continue
            deadline = deadline_s(waiting, pa, self.knative)
            waited = now - min(_created(p) for p in waiting)
            if state != "failed" and waited > deadline:
                await self._fail(namespace, group, waiting, deadline, now)
                outcome.failed.append(name)
                continue
            complete = len(waiting) >= minimum_size(waiting, pa)
            placement = first_fit(waiting, nodes, free) if complete else None
            if placement is None:
                if complete and state != "failed" and self.provision_after_s is not None and waited > self.provision_after_s:
                    await self._provision(namespace, group, waiting, now)
                    outcome.provisioning.append(name)
                else:
                    if complete and state != "failed":  # a failed group's condition keeps saying so
                        message = (
                            f"pod group {group} ({len(waiting)} pods, {sum(pod_requests(p).gpu for p in waiting)} GPUs) does "
                            "not fit the nodes' free capacity: its pods stay gated, holding nothing, until it does"
                        )
                        await self._tell(waiting, "False", "InsufficientCapacity", message, now)
                    outcome.waiting.append(name)
                continue
            await self._admit(namespace, group, waiting, placement, now)
            for pod in waiting:
                node_name = placement[pod["metadata"]["name"]]
                free[node_name] = free[node_name] - pod_requests(pod)
            outcome.admitted.append(name)
        return outcome

    async def _provision(self, namespace: str, group: str, pods: list[dict], now: float) -> None:
        """Ungate a group that does not fit, so that its Pending pods make the Cluster Autoscaler
        add nodes (it ignores gated pods); the group may run partly meanwhile, and fails at its
        deadline if it still is not all bound."""
        entry = {"state": "provisioning", "pods": sorted(p["metadata"]["name"] for p in pods), "at": now}
        await self._update_ledger(lambda entries: entries.__setitem__(_ledger_key(namespace, group), entry))
        await asyncio.gather(*(self._ungate(namespace, p["metadata"]["name"]) for p in pods))
        message = f"pod group {group} does not fit: ungated, its pods Pending for the Cluster Autoscaler to add nodes"
        await self._tell(pods, "False", "Provisioning", message, now)
        log.info("pod group %s/%s does not fit: ungated for the cluster autoscaler to add nodes", namespace, group)

    async def _admit(self, namespace: str, group: str, pods: list[dict], placement: dict[str, str], now: float) -> None:
        held: dict[str, Resources] = {}
        for pod in pods:
            node_name = placement[pod["metadata"]["name"]]
            held[node_name] = held.get(node_name, Resources()) + pod_requests(pod)
        entry = {
            "state": "admitting",
            "pods": sorted(placement),
            "held": [[n, {"gpu": r.gpu, "cpu_m": r.cpu_m, "memory": r.memory}] for n, r in sorted(held.items())],
            "gpus_by_node": {n: r.gpu for n, r in held.items() if r.gpu},
            "at": now,
        }
        # the ledger first: from here on, a crash is finished by the next pass (all gates go)
        await self._update_ledger(lambda entries: entries.__setitem__(_ledger_key(namespace, group), entry))
        await asyncio.gather(*(self._ungate(namespace, p["metadata"]["name"]) for p in pods))
        await self._tell(pods, "True", "Admitted", f"pod group {group} admitted: {len(pods)} pods placed", now)
        log.info("pod group %s/%s admitted: %d pods on %s", namespace, group, len(pods), sorted(set(placement.values())))

    async def _ungate(self, namespace: str, name: str) -> None:
        async def attempt() -> None:
            try:
                pod = await self.kube.get(PODS, namespace, name)
            except ApiError as exc:
                if exc.status == 404:
                    return  # deleted meanwhile: its replacement is gated and joins the group again
                raise
            gates = (pod.get("spec") or {}).get("schedulingGates") or []
            index = next((i for i, g in enumerate(gates) if g.get("name") == ann.POD_GROUP), None)
            if index is None:
                return
            path = f"/spec/schedulingGates/{index}"
            # `test` makes the removal exact even if another controller edits the gates meanwhile
            await self.kube.patch(
                PODS, namespace, name, [{"op": "test", "path": path, "value": gates[index]}, {"op": "remove", "path": path}]
            )

        await with_retries(attempt, f"ungate {namespace}/{name}")

    async def _finish_interrupted(self, groups: dict[tuple[str, str], list[dict]], outcome: Outcome) -> None:
        for key, entry in self.ledger.items():
            if entry.get("state") not in ("admitting", "provisioning"):
                continue
            namespace, _, group = key.partition(".")
            still_gated = [p for p in groups.get((namespace, group), []) if gated(p)]
            if still_gated:
                await asyncio.gather(*(self._ungate(namespace, p["metadata"]["name"]) for p in still_gated))
                outcome.admitted.append(f"{namespace}/{group}")

    async def _forget_settled(self, groups: dict[tuple[str, str], list[dict]]) -> None:
        settled = []
        for key, entry in self.ledger.items():
            namespace, _, group = key.partition(".")
            pods = groups.get((namespace, group), [])
            if entry.get("state") in ("admitting", "provisioning") and all(
                (p.get("spec") or {}).get("nodeName") for p in pods if not gated(p)
            ):
                listed = set(entry.get("pods", []))
                if not any(gated(p) and p["metadata"]["name"] in listed for p in pods):
                    settled.append(key)
            elif entry.get("state") == "failed" and not pods:  # the revision is gone (or at zero)
                settled.append(key)
        if settled:
            await self._update_ledger(lambda entries: [entries.pop(k, None) for k in settled])

    async def _fail(self, namespace: str, group: str, pods: list[dict], deadline: float, now: float) -> None:
        reason = (
            f"pod group {group} did not fit within its progress deadline ({deadline:g} s): the previous revision keeps serving"
        )
        if self.knative.problem:
            reason += f"; {self.knative.problem}"
        entry = {"state": "failed", "at": now, "reason": reason}
        await self._update_ledger(lambda entries: entries.__setitem__(_ledger_key(namespace, group), entry))
        for pod in pods:
            try:
                await with_retries(
                    lambda name=pod["metadata"]["name"]: self.kube.delete(PODS, namespace, name), "delete gated pod"
                )
            except ApiError as exc:
                if exc.status != 404:
                    raise
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{group}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "serving.knative.dev/v1", "kind": "Revision", "name": group, "namespace": namespace},
            "reason": "PodGroupTimedOut",
            "message": reason,
            "type": "Warning",
            "source": {"component": "inference-autoscaler"},
            "firstTimestamp": rfc3339(now),
            "lastTimestamp": rfc3339(now),
            "count": 1,
        }
        await with_retries(lambda: self.kube.create(EVENTS, namespace, event), "pod group event")
        await self._tell(pods, "False", "ProgressDeadlineExceeded", reason, now)
        log.warning("%s/%s: %s", namespace, group, reason)

    async def _tell(self, pods: list[dict], status: str, reason: str, message: str, now: float) -> None:
        """The PodGroupAdmitted condition on the ISVC of the group's pods (their ISVC label), when it
        differs from what this process last wrote there."""
        meta = pods[0].get("metadata") or {}
        isvc = (meta.get("labels") or {}).get(ISVC_LABEL)
        key, told = (meta.get("namespace", ""), isvc or ""), (status, reason, message)
        if not isvc or self._told.get(key) == told:
            return
        wanted = {"type": CONDITION_TYPE, "status": status, "reason": reason, "message": message}
        try:
            await write_condition(self.kube, await self.kube.get(INFERENCE_SERVICES, *key), wanted, now)
        except ApiError as exc:
            if exc.status != 404:  # 404: the ISVC is gone, nobody to tell
                # a status it cannot write must not stop the pass's other groups: told again next pass
                log.warning("cannot set %s on %s/%s (%s): retried next pass", CONDITION_TYPE, *key, exc)
                return
        self._told[key] = told

    async def run(self, period_s: float = 2.0) -> None:
        while True:
            try:
                await self.reconcile()
            except ApiError as exc:
                log.warning("gang admission pass failed (%s); next pass retries", exc)
            await asyncio.sleep(period_s)


def _wanted_products(pod: dict) -> set[str]:
    spec = pod.get("spec") or {}
    products = set()
    if GPU_PRODUCT_LABEL in (spec.get("nodeSelector") or {}):
        products.add(spec["nodeSelector"][GPU_PRODUCT_LABEL])
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expression in term.get("matchExpressions") or []:
            if expression.get("key") == GPU_PRODUCT_LABEL and expression.get("operator") == "In":
                products.update(expression.get("values") or [])
    return products
