"""Reads Inferno's JSON problem files into the domain model, naming file and field on bad input.

A problem is either a directory of the six `*-data.json` files or one `system-data.json` holding
them all under `"system"`. JSON keys are matched case-insensitively (`AvgInTokens` and
`avgInTokens` both occur in the wild); the 2025 (decodeParms/prefillParms) and 2026 (perfParms)
profile schemas are told apart per model entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..limits import MAX_BATCH, MAX_MAGNITUDE
from .domain import (
    DEFAULT_CLASS_NAME,
    LOWEST_PRIORITY,
    Accelerator,
    Catalog,
    CurrentAllocation,
    DecodePrefillParams,
    IterationParams,
    Load,
    ModelProfile,
    OptimizerSpec,
    PrefillLine,
    SaturationPolicy,
    Server,
    ServiceClass,
    ServiceTarget,
    System,
)

SYSTEM_FILE = "system-data.json"
# section key inside system-data.json -> file name in a directory
SECTIONS = {
    "acceleratordata": "accelerator-data.json",
    "capacitydata": "capacity-data.json",
    "modeldata": "model-data.json",
    "serviceclassdata": "serviceclass-data.json",
    "serverdata": "server-data.json",
    "optimizerdata": "optimizer-data.json",
}
OPTIONAL_SECTIONS = {"optimizerdata"}


class Node:
    """A JSON value with the file and path it came from, so every error can say where."""

    __slots__ = ("path", "source", "value")

    def __init__(self, value: Any, source: str, path: str = ""):
        self.value = value
        self.source = source
        self.path = path

    def fail(self, problem: str) -> InputError:
        return InputError(self.source, self.path or "(top level)", problem)

    def _child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def maybe(self, key: str) -> Node | None:
        """The member `key`, or None where it is absent or null."""
        if not isinstance(self.value, dict):
            raise self.fail(f"expected an object, got {_describe(self.value)}")
        value = self.value.get(key.lower())
        return None if value is None else Node(value, self.source, self._child_path(key))

    def child(self, key: str) -> Node:
        node = self.maybe(key)
        if node is None:
            raise InputError(self.source, self._child_path(key), "missing")
        return node

    def _member(self, key: str, required: bool) -> Node | None:
        return self.child(key) if required else self.maybe(key)

    def items(self, key: str, required: bool = True) -> Iterator[Node]:
        node = self._member(key, required)
        if node is None:
            return
        if not isinstance(node.value, list):
            raise node.fail(f"expected a list, got {_describe(node.value)}")
        for i, item in enumerate(node.value):
            yield Node(item, self.source, f"{node.path}[{i}]")

    def string(self, key: str, default: str | None = None) -> str:
        node = self._member(key, required=default is None)
        if node is None:
            return default  # type: ignore[return-value]
        if not isinstance(node.value, str):
            raise node.fail(f"expected a string, got {_describe(node.value)}")
        return node.value

    def number(
        self, key: str, default: float | None = None, minimum: float | None = 0.0, maximum: float = MAX_MAGNITUDE
    ) -> float:
        """A finite number within [minimum, maximum]: beyond MAX_MAGNITUDE a cost, rate or
        coefficient is a typo that would overflow the model's products to infinity."""
        node = self._member(key, required=default is None)
        if node is None:
            return default  # type: ignore[return-value]
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise node.fail(f"expected a number, got {_describe(value)}")
        if minimum is not None and value < minimum:
            raise node.fail(f"must be >= {minimum:g}, got {value:g}")
        if value > maximum:
            raise node.fail(f"must be <= {maximum:g}, got {value:g}")
        return float(value)

    def integer(self, key: str, default: int | None = None, minimum: int | None = 0, maximum: float = MAX_MAGNITUDE) -> int:
        value = self.number(key, None if default is None else float(default), minimum, maximum)
        if value != int(value):
            raise self.child(key).fail(f"expected a whole number, got {value:g}")
        return int(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        node = self.maybe(key)
        if node is None:
            return default
        if not isinstance(node.value, bool):
            raise node.fail(f"expected true or false, got {_describe(node.value)}")
        return node.value


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"{value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"a {'list' if isinstance(value, list) else 'object'}"


def _lowercase_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key.lower(): value for key, value in pairs}


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_lowercase_keys)
    except json.JSONDecodeError as exc:
        raise InputError(source, f"line {exc.lineno} column {exc.colno}", f"malformed JSON: {exc.msg}") from None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), "", f"cannot read: {exc}") from None
    return parse_json(text, str(path))


def load_system(path: str | Path) -> System:
    """Load a problem from a directory of data files or a single system-data.json."""
    path = Path(path)
    if path.is_dir():
        sections = {}
        split_files = [path / name for name in SECTIONS.values()]
        if not any(f.exists() for f in split_files) and (path / SYSTEM_FILE).exists():
            return load_system(path / SYSTEM_FILE)
        for key, name in SECTIONS.items():
            file = path / name
            if key in OPTIONAL_SECTIONS and not file.exists():
                continue
            sections[key] = Node(_read_json(file), str(file))
        return system_from_sections(sections)
    document = Node(_read_json(path), str(path))
    return system_from_document(document)


def system_from_document(document: Node) -> System:
    """A parsed system-data.json: {"system": {"acceleratorData": {...}, ...}}."""
    root = document.child("system")
    sections = {}
    for key in SECTIONS:
        node = root.child(key) if key not in OPTIONAL_SECTIONS else root.maybe(key)
        if node is not None:
            sections[key] = node
    return system_from_sections(sections)


def catalog_from_sections(sections: dict[str, Node]) -> Catalog:
    """The static sections (accelerators, models, service classes, optimizer options)."""
    accelerators = _accelerators(sections["acceleratordata"])
    profiles = _profiles(sections["modeldata"], accelerators)
    classes = _classes(sections["serviceclassdata"])
    optimizer = _optimizer(sections["optimizerdata"]) if "optimizerdata" in sections else OptimizerSpec()
    return Catalog(accelerators, profiles, classes, optimizer)


def system_from_sections(sections: dict[str, Node]) -> System:
    catalog = catalog_from_sections(sections)
    capacity = _capacity(sections["capacitydata"])
    servers = _servers(sections["serverdata"], catalog.profiles, catalog.classes, catalog.accelerators)
    return System(catalog.accelerators, capacity, catalog.profiles, catalog.classes, servers, catalog.optimizer)


def _unique(items: Iterator[Node], key: Callable[[Node], Any], what: str) -> list[tuple[Node, Any]]:
    seen: set[Any] = set()
    result = []
    for node in items:
        k = key(node)
        if k in seen:
            raise node.fail(f"duplicate {what} {k!r}")
        seen.add(k)
        result.append((node, k))
    return result


def _accelerators(doc: Node) -> dict[str, Accelerator]:
    result = {}
    for node, name in _unique(doc.items("accelerators"), lambda n: n.string("name"), "accelerator"):
        result[name] = Accelerator(
            name=name,
            type=node.string("type", default=name),
            multiplicity=node.integer("multiplicity", default=1, minimum=1),
            cost=node.number("cost"),
        )
    return result


def _capacity(doc: Node) -> dict[str, int]:
    return {
        type_name: node.integer("count")
        for node, type_name in _unique(doc.items("count"), lambda n: n.string("type"), "accelerator type")
    }


def _perf_params(node: Node) -> DecodePrefillParams | IterationParams:
    perf = node.maybe("perfParms")
    if perf is not None:
        return IterationParams(perf.number("alpha"), perf.number("beta"), perf.number("gamma"))
    decode = node.maybe("decodeParms")
    prefill = node.maybe("prefillParms")
    if decode is None or prefill is None:
        raise node.fail("needs perfParms {alpha, beta, gamma} or decodeParms {alpha, beta} and prefillParms {gamma, delta}")
    return DecodePrefillParams(decode.number("alpha"), decode.number("beta"), prefill.number("gamma"), prefill.number("delta"))


def _prefill_line(node: Node) -> PrefillLine | None:
    """prefillParms beside perfParms: the measured prefill line the latency model's roofline
    reads (with decodeParms they are the 2025 profile itself)."""
    prefill = node.maybe("prefillParms")
    if prefill is None or node.maybe("perfParms") is None:
        return None
    return PrefillLine(prefill.number("gamma"), prefill.number("delta"))


def _profiles(doc: Node, accelerators: dict[str, Accelerator]) -> dict[tuple[str, str], ModelProfile]:
    result = {}
    entries = _unique(doc.items("models"), lambda n: (n.string("name"), n.string("acc")), "model/accelerator pair")
    for node, (model, acc) in entries:
        if acc not in accelerators:
            raise node.child("acc").fail(f"unknown accelerator {acc!r}")
        acc_count = node.integer("accCount", default=1, minimum=None)
        result[(model, acc)] = ModelProfile(
            model=model,
            accelerator=acc,
            acc_count=max(acc_count, 1),  # Inferno counts accCount <= 0 as one card
            max_batch_size=node.integer("maxBatchSize", minimum=1, maximum=MAX_BATCH),
            at_tokens=node.integer("atTokens", default=0),
            params=_perf_params(node),
            kv_cache_tokens=node.integer("kvCacheTokens", default=0),
            prefill=_prefill_line(node),
        )
    return result


def _classes(doc: Node) -> dict[str, ServiceClass]:
    result = {}
    for node, name in _unique(doc.items("serviceClasses"), lambda n: n.string("name"), "service class"):
        priority = node.integer("priority", default=LOWEST_PRIORITY, minimum=None)
        if not 1 <= priority <= LOWEST_PRIORITY:
            priority = LOWEST_PRIORITY
        targets = {}
        for target, model in _unique(node.items("modelTargets", required=False), lambda n: n.string("model"), "model target"):
            targets[model] = ServiceTarget(
                itl_ms=target.number("slo-itl", default=0.0),
                ttft_ms=target.number("slo-ttft", default=0.0),
                tps=target.number("slo-tps", default=0.0),
            )
        result[name] = ServiceClass(name, priority, targets)
    return result


def _optimizer(doc: Node) -> OptimizerSpec:
    spec = doc.child("optimizer")
    policy_name = spec.string("saturationPolicy", default=SaturationPolicy.NONE.value)
    try:
        policy = SaturationPolicy(policy_name)
    except ValueError:
        allowed = ", ".join(p.value for p in SaturationPolicy)
        raise spec.child("saturationPolicy").fail(f"unknown policy {policy_name!r} (one of {allowed})") from None
    return OptimizerSpec(
        unlimited=spec.boolean("unlimited"),
        delayed_best_effort=spec.boolean("delayedBestEffort"),
        saturation_policy=policy,
    )


def _servers(
    doc: Node,
    profiles: dict[tuple[str, str], ModelProfile],
    classes: dict[str, ServiceClass],
    accelerators: dict[str, Accelerator],
) -> tuple[Server, ...]:
    models = {model for model, _ in profiles}
    result = []
    for node, name in _unique(doc.items("servers"), lambda n: n.string("name"), "server"):
        model = node.string("model")
        if model not in models:
            raise node.child("model").fail(f"unknown model {model!r} (no profile in model data)")
        class_name = node.string("class", default="") or DEFAULT_CLASS_NAME
        if class_name not in classes:
            raise InputError(node.source, f"{node.path}.class", f"unknown service class {class_name!r}")
        if model not in classes[class_name].targets:
            raise InputError(node.source, f"{node.path}.model", f"service class {class_name!r} has no target for model {model!r}")
        current_node = node.child("currentAlloc")
        load_node = current_node.child("load")
        load = Load(
            arrival_rate_rpm=load_node.number("arrivalRate"),
            avg_in_tokens=load_node.integer("avgInTokens", default=0),
            avg_out_tokens=load_node.integer("avgOutTokens", default=0),
        )
        current_acc = current_node.string("accelerator", default="")
        if current_acc and current_acc not in accelerators:
            raise current_node.child("accelerator").fail(f"unknown accelerator {current_acc!r}")
        # kept even without an accelerator: Inferno values moves from it, cost included
        current = CurrentAllocation(
            accelerator=current_acc,
            num_replicas=current_node.integer("numReplicas", default=0),
            max_batch=current_node.integer("maxBatch", default=0),
            cost=current_node.number("cost", default=0.0),
        )
        result.append(
            Server(
                name=name,
                class_name=class_name,
                model=model,
                load=load,
                min_replicas=node.integer("minNumReplicas", default=0),
                max_batch_size=node.integer("maxBatchSize", default=0),
                keep_accelerator=node.boolean("keepAccelerator"),
                current=current,
            )
        )
    return tuple(result)
