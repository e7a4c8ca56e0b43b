"""InferenceServices that opt in, read into what the planner needs (policy.decisions), with the
last decision the controller stored for each (decision_store.py)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .. import annotations as ann
from ..kserve import DEFAULT_MODE, KNATIVE, KSERVE_AUTOSCALER_CLASS, STANDARD, deployment_mode
from ..optimizer.domain import Catalog
from ..policy.decisions import LastDecision, ManagedService

log = logging.getLogger(__name__)
DEFAULT_BOUNDS = ann.ClassDefaults()
Decisions = Callable[[str], "tuple[str, str] | None"]  # ISVC uid -> (stored decision, its version), None if none


def no_decisions(uid: str) -> None:
    return None


@dataclass(frozen=True)
class Rejected:
    namespace: str
    name: str
    problem: str


def _read_one(
    isvc: dict, catalog: Catalog, classes: Mapping[str, ann.ClassDefaults], decisions: Decisions, default_mode: str
) -> ManagedService | Rejected | None:
    meta = isvc.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if annotations.get(ann.ENABLED) != "true":
        return None
    namespace, name = meta.get("namespace", ""), meta.get("name", "")
    findings = ann.check(annotations, classes)
    if findings.errors:
        return Rejected(namespace, name, "; ".join(findings.errors))
    model = annotations.get(ann.MODEL, name)
    if not any(m == model for m, _ in catalog.profiles):
        return Rejected(namespace, name, f"unknown model {model!r}: no performance profile in the optimizer data")
    mode = deployment_mode(isvc, default_mode)
    if mode not in (STANDARD, KNATIVE):
        return Rejected(
            namespace, name, f"deployment mode {mode!r}: only Standard (RawDeployment) and Knative (Serverless) are managed"
        )
    if mode == STANDARD and annotations.get(KSERVE_AUTOSCALER_CLASS) not in ("external", "keda"):
        return Rejected(
            namespace,
            name,
            f"Standard mode with KServe's own HPA: set {KSERVE_AUTOSCALER_CLASS} to external (our webhook does when "
            "serving.kserve.io/deploymentMode says Standard) or keda, or two HPAs would fight over the Deployment",
        )
    service_class = annotations[ann.SERVICE_CLASS]
    if model not in catalog.classes[service_class].targets:
        return Rejected(namespace, name, f"service class {service_class!r} has no target for model {model!r}")
    bounds = (
        int(annotations.get(ann.MIN_REPLICAS, DEFAULT_BOUNDS.min_replicas)),
        int(annotations.get(ann.MAX_REPLICAS, DEFAULT_BOUNDS.max_replicas)),
    )
    last = None
    if stored := decisions(meta.get("uid", "")):
        try:
            last = _last_decision(stored[0], model, bounds, catalog)
        except ValueError as exc:
            log.error("%s/%s: stored decision ignored (%s): deciding afresh", namespace, name, exc)
    return ManagedService(
        namespace=namespace,
        name=name,
        model=model,
        service_class=service_class,
        accelerators=frozenset(t.strip() for t in annotations.get(ann.ACCELERATORS, "").split(",") if t.strip()),
        min_replicas=bounds[0],
        max_replicas=bounds[1],
        raw_deployment=mode == STANDARD,
        spec_changes=annotations.get(ann.SPEC_CHANGES) == "true",
        last=last,
        uid=meta.get("uid", ""),
    )


def _last_decision(text: str, model: str, bounds: tuple[int, int], catalog: Catalog) -> LastDecision:
    """The remembered decision, checked against the data: it is believed only within what the
    controller itself could decide now (the data or the ISVC's bounds may have changed since, or
    someone with access to our namespace edited it)."""
    last = LastDecision.from_json(text)
    profile = catalog.profiles.get((model, last.accelerator))
    if profile is None:
        raise ValueError(f"accelerator: no profile of model {model!r} on {last.accelerator!r} in the optimizer data")
    largest = profile.batch_limit(0, 1)  # the largest batch the planner could decide, for the shortest requests
    if last.max_batch > largest:
        raise ValueError(f"max_batch: {last.max_batch} exceeds the largest the profile allows ({largest})")
    low, high = bounds
    if not low <= last.replicas <= high:  # the bounds were edited since: what runs is brought within them
        last = dataclasses.replace(last, replicas=min(max(last.replicas, low), high))
    return last


def _split(results: Iterable[ManagedService | Rejected | None]) -> tuple[list[ManagedService], list[Rejected]]:
    services, rejected = [], []
    for result in results:
        if isinstance(result, ManagedService):
            services.append(result)
        elif isinstance(result, Rejected):
            rejected.append(result)
    return services, rejected


def read_services(
    isvcs: Iterable[dict], catalog: Catalog, decisions: Decisions = no_decisions, default_mode: str = DEFAULT_MODE
) -> tuple[list[ManagedService], list[Rejected]]:
    """The managed ISVCs, and those that opt in but cannot be managed (with the reason)."""
    classes = {name: DEFAULT_BOUNDS for name in catalog.classes}
    return _split(_read_one(isvc, catalog, classes, decisions, default_mode) for isvc in isvcs)


class ServiceReader:
    """read_services with a memory: an ISVC is read again only when its resourceVersion, its
    stored decision's or the data changed, so a steady cycle does not parse 1,000 decisions again."""

    def __init__(self, decisions: Decisions, default_mode: str = DEFAULT_MODE):
        self.decisions = decisions
        self.default_mode = default_mode
        self._catalog: Catalog | None = None
        self._memo: dict[tuple[str, str], tuple[tuple[str, str], ManagedService | Rejected | None]] = {}

    def read(self, isvcs: Iterable[dict], catalog: Catalog) -> tuple[list[ManagedService], list[Rejected]]:
        if catalog is not self._catalog:
            self._catalog, self._memo = catalog, {}
        classes = {name: DEFAULT_BOUNDS for name in catalog.classes}
        memo = {}
        for isvc in isvcs:
            meta = isvc.get("metadata") or {}
            stored = self.decisions(meta.get("uid", ""))
            key = (meta.get("namespace", ""), meta.get("name", ""))
            version = (meta.get("resourceVersion", ""), stored[1] if stored else "")
            known = self._memo.get(key)
            fresh = known is not None and known[0] == version
            memo[key] = known if fresh else (version, _read_one(isvc, catalog, classes, self.decisions, self.default_mode))
        self._memo = memo
        return _split(result for _, result in memo.values())
