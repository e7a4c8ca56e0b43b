"""InferenceServices that opt in, read into what the planner needs (policy.decisions), with the
last decision from the ISVC's annotation when its signature verifies (signing.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .. import annotations as ann
from ..kserve import is_raw_deployment
from ..optimizer.domain import Catalog
from ..policy.decisions import LastDecision, ManagedService
from .signing import DecisionSigner

log = logging.getLogger(__name__)
DEFAULT_BOUNDS = ann.ClassDefaults()


@dataclass(frozen=True)
class Rejected:
    namespace: str
    name: str
    problem: str


def _last_decision(meta: dict, annotations: Mapping[str, str], signer: DecisionSigner) -> LastDecision | None:
    """The decision the controller signed; None (decide afresh) for none, or one it did not sign."""
    text = annotations.get(ann.DECISION)
    if text is None:
        return None
    uid, namespace, name = meta.get("uid", ""), meta.get("namespace", ""), meta.get("name", "")
    if not signer.verify(uid, namespace, name, text, annotations.get(ann.DECISION_SIGNATURE, "")):
        log.warning("%s/%s: the decision annotation is not signed by this controller: ignored", namespace, name)
        return None
    return LastDecision.from_json(text)


def _read_one(
    isvc: dict, catalog: Catalog, classes: Mapping[str, ann.ClassDefaults], signer: DecisionSigner
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
    service_class = annotations[ann.SERVICE_CLASS]
    if model not in catalog.classes[service_class].targets:
        return Rejected(namespace, name, f"service class {service_class!r} has no target for model {model!r}")
    return ManagedService(
        namespace=namespace,
        name=name,
        model=model,
        service_class=service_class,
        accelerators=frozenset(t.strip() for t in annotations.get(ann.ACCELERATORS, "").split(",") if t.strip()),
        min_replicas=int(annotations.get(ann.MIN_REPLICAS, DEFAULT_BOUNDS.min_replicas)),
        max_replicas=int(annotations.get(ann.MAX_REPLICAS, DEFAULT_BOUNDS.max_replicas)),
        raw_deployment=is_raw_deployment(isvc),
        spec_changes=annotations.get(ann.SPEC_CHANGES) == "true",
        last=_last_decision(meta, annotations, signer),
        uid=meta.get("uid", ""),
    )


def _split(results: Iterable[ManagedService | Rejected | None]) -> tuple[list[ManagedService], list[Rejected]]:
    services, rejected = [], []
    for result in results:
        if isinstance(result, ManagedService):
            services.append(result)
        elif isinstance(result, Rejected):
            rejected.append(result)
    return services, rejected


def read_services(isvcs: Iterable[dict], catalog: Catalog, signer: DecisionSigner) -> tuple[list[ManagedService], list[Rejected]]:
    """The managed ISVCs, and those that opt in but cannot be managed (with the reason)."""
    classes = {name: DEFAULT_BOUNDS for name in catalog.classes}
    return _split(_read_one(isvc, catalog, classes, signer) for isvc in isvcs)


class ServiceReader:
    """read_services with a memory: an ISVC is read again only when its resourceVersion (or the
    data) changed, so a steady cycle does not parse 1,000 decision annotations again."""

    def __init__(self, signer: DecisionSigner):
        self.signer = signer
        self._catalog: Catalog | None = None
        self._memo: dict[tuple[str, str], tuple[str, ManagedService | Rejected | None]] = {}

    def read(self, isvcs: Iterable[dict], catalog: Catalog) -> tuple[list[ManagedService], list[Rejected]]:
        if catalog is not self._catalog:
            self._catalog, self._memo = catalog, {}
        classes = {name: DEFAULT_BOUNDS for name in catalog.classes}
        memo = {}
        for isvc in isvcs:
            meta = isvc.get("metadata") or {}
            key, version = (meta.get("namespace", ""), meta.get("name", "")), meta.get("resourceVersion", "")
            known = self._memo.get(key)
            fresh = known is not None and known[0] == version
            memo[key] = known if fresh else (version, _read_one(isvc, catalog, classes, self.signer))
        self._memo = memo
        return _split(result for _, result in memo.values())
