"""InferenceServices that opt in, read into what the planner needs (policy.decisions), with the
last decision from the ISVC's annotation when its signature verifies (signing.py) and its values
are within what the controller could decide itself."""

from __future__ import annotations

import dataclasses
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


def _signed_text(meta: dict, annotations: Mapping[str, str], signer: DecisionSigner) -> str | None:
    """The decision annotation the controller signed; None (decide afresh) for none, or one it
    did not sign."""
    text = annotations.get(ann.DECISION)
    if text is None:
        return None
    uid, namespace, name = meta.get("uid", ""), meta.get("namespace", ""), meta.get("name", "")
    if not signer.verify(uid, namespace, name, text, annotations.get(ann.DECISION_SIGNATURE, "")):
        log.warning("%s/%s: the decision annotation is not signed by this controller: ignored", namespace, name)
        return None
    return text


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
    bounds = (
        int(annotations.get(ann.MIN_REPLICAS, DEFAULT_BOUNDS.min_replicas)),
        int(annotations.get(ann.MAX_REPLICAS, DEFAULT_BOUNDS.max_replicas)),
    )
    last, text = None, _signed_text(meta, annotations, signer)
    if text is not None:
        try:
            last = _last_decision(text, model, bounds, catalog)
        except ValueError as exc:
            log.error("%s/%s: annotation %s ignored (%s): deciding afresh", namespace, name, ann.DECISION, exc)
    return ManagedService(
        namespace=namespace,
        name=name,
        model=model,
        service_class=service_class,
        accelerators=frozenset(t.strip() for t in annotations.get(ann.ACCELERATORS, "").split(",") if t.strip()),
        min_replicas=bounds[0],
        max_replicas=bounds[1],
        raw_deployment=is_raw_deployment(isvc),
        spec_changes=annotations.get(ann.SPEC_CHANGES) == "true",
        last=last,
        uid=meta.get("uid", ""),
    )


def _last_decision(text: str, model: str, bounds: tuple[int, int], catalog: Catalog) -> LastDecision:
    """The remembered decision, checked against the data: anyone who may edit the ISVC can write
    the annotation, so it is believed only within what the controller itself could decide."""
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


def read_services(isvcs: Iterable[dict], catalog: Catalog, signer: DecisionSigner) -> tuple[list[ManagedService], list[Rejected]]:
    """The managed ISVCs, and those that opt in but cannot be managed (with the reason)."""
    classes = {name: DEFAULT_BOUNDS for name in catalog.classes}
    return _split(_read_one(isvc, catalog, classes, signer) for isvc in isvcs)


class ServiceReader:
    """read_services with a memory: an ISVC is read again only when its resourceVersion (or the
    data) changed, so a steady cycle does not parse 1,000 decision annotations again. It also
    remembers the newest decision made or read for each ISVC (by uid): an older one, though
    signed, is one put back by hand (a replay), and the newer one stands."""

    def __init__(self, signer: DecisionSigner):
        self.signer = signer
        self._catalog: Catalog | None = None
        self._memo: dict[tuple[str, str], tuple[str, ManagedService | Rejected | None]] = {}
        self._newest: dict[str, LastDecision] = {}

    def _not_older(self, result: ManagedService | Rejected | None) -> ManagedService | Rejected | None:
        if not isinstance(result, ManagedService) or result.last is None:
            return result
        newest = self._newest.get(result.uid)
        if newest is not None and result.last.decided_at < newest.decided_at:
            log.warning("%s: the decision annotation is older than one already read: ignored", result.key)
            return dataclasses.replace(result, last=newest)
        self._newest[result.uid] = result.last
        return result

    def remember(self, decided: Iterable[tuple[str, LastDecision]]) -> None:
        """The decisions just made (uid, decision): what an annotation must not be older than."""
        self._newest.update(decided)

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
            memo[key] = known if fresh else (version, self._not_older(_read_one(isvc, catalog, classes, self.signer)))
        self._memo = memo
        live = {result.uid for _, result in memo.values() if isinstance(result, ManagedService)}
        self._newest = {uid: last for uid, last in self._newest.items() if uid in live}  # deleted ISVCs forgotten
        return _split(result for _, result in memo.values())
