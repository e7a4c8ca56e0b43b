"""The annotations an InferenceService uses to opt in to our autoscaling, and their checks.

All live under the prefix `autoscaling.inference-autoscaler.io/`:

| annotation | value |
|---|---|
| `enabled` | `"true"` to manage the ISVC |
| `service-class` | a service class name from the optimizer's data (required when enabled) |
| `model` | the model name in the performance profiles (default: the ISVC name) |
| `accelerators` | comma-separated GPU types the optimizer may choose from (default: any) |
| `min-replicas`, `max-replicas` | bounds, whole numbers, 0 <= min <= max <= 1000 (default: the class's) |
| `progress-deadline` | seconds a new revision's pod group may wait for GPUs, 1 to 3600 (default 600) |
| `spec-changes` | `"true"` lets the controller roll out a new GPU type or batch size (default `"false"`) |
| `scaler` | Standard mode: `hpa` (default: our HPA scales the Deployment) or `keda` (a ScaledObject does) |

The controller writes nothing on the ISVC's metadata or spec for a replica change: KServe copies
ISVC annotations into the revision template and pod template, so a write there would be a
rollout. Its last decision lives in its own namespace (autoscaler/controller/decision_store.py).
`decision` is what versions before that wrote; it is ignored, and left in place since removing it
would itself be one more rollout.

Numbers are ASCII digits only (Python's `int()` and regex digit class also take "３" or "٣").
1000 replicas is a sanity bound, not a capacity plan: no cluster lends one model a thousand GPU
servers, and a bound keeps a typo (or a 4,300-digit value) from reaching the HPA, the planner or
a JSONPatch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

PREFIX = "autoscaling.inference-autoscaler.io/"
ENABLED = PREFIX + "enabled"
SERVICE_CLASS = PREFIX + "service-class"
MODEL = PREFIX + "model"
ACCELERATORS = PREFIX + "accelerators"
MIN_REPLICAS = PREFIX + "min-replicas"
MAX_REPLICAS = PREFIX + "max-replicas"
PROGRESS_DEADLINE = PREFIX + "progress-deadline"
SPEC_CHANGES = PREFIX + "spec-changes"
SCALER = PREFIX + "scaler"
SCALERS = ("hpa", "keda")
LEGACY_DECISION = PREFIX + "decision"
POD_GROUP = PREFIX + "pod-group"  # scheduling gate and pod label naming a revision's gang
KNOWN = {
    ENABLED,
    SERVICE_CLASS,
    MODEL,
    ACCELERATORS,
    MIN_REPLICAS,
    MAX_REPLICAS,
    PROGRESS_DEADLINE,
    SPEC_CHANGES,
    SCALER,
    LEGACY_DECISION,
}

KNATIVE_CLASS = "autoscaling.knative.dev/class"
OUR_KNATIVE_CLASS = "optimizer.autoscaling.inference-autoscaler.io"
DEFAULT_PROGRESS_DEADLINE_S = 600
MAX_PROGRESS_DEADLINE_S = 3600
REPLICAS_BOUND = 1000
WHOLE = re.compile(r"[0-9]+", re.ASCII)
NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class ClassDefaults:
    """What a service class implies when the ISVC does not say: replica bounds."""

    min_replicas: int = 1
    max_replicas: int = 10


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _whole(value: str, key: str, findings: Findings, minimum: int, maximum: int, unit: str = "") -> int | None:
    digits = value.strip()
    if not WHOLE.fullmatch(digits):
        findings.errors.append(f"annotation {key}: expected a whole number (ASCII digits), got {value[:40]!r}")
        return None
    digits = digits.lstrip("0") or "0"
    if len(digits) > len(str(maximum)):  # compared as text: int() of thousands of digits is slow
        findings.errors.append(f"annotation {key}: at most {maximum}{unit}, got a number of {len(digits)} digits")
        return None
    number = int(digits)
    if number > maximum:
        findings.errors.append(f"annotation {key}: at most {maximum}{unit}, got {number}")
        return None
    if number < minimum:
        findings.errors.append(f"annotation {key}: must be >= {minimum}, got {number}")
        return None
    return number


def check(annotations: Mapping[str, str], classes: Mapping[str, ClassDefaults]) -> Findings:
    """Every problem with our annotations, each naming the annotation and the allowed values."""
    findings = Findings()
    ours = {k: v for k, v in annotations.items() if k.startswith(PREFIX)}
    for key in sorted(set(ours) - KNOWN):
        findings.warnings.append(f"annotation {key} is not one of ours and is ignored")
    enabled = ours.get(ENABLED, "false")
    if enabled not in ("true", "false"):
        findings.errors.append(f'annotation {ENABLED}: expected "true" or "false", got {enabled!r}')
        return findings
    if ours.get(SPEC_CHANGES, "false") not in ("true", "false"):
        findings.errors.append(f'annotation {SPEC_CHANGES}: expected "true" or "false", got {ours[SPEC_CHANGES]!r}')
    if ours.get(SCALER, "hpa") not in SCALERS:
        findings.errors.append(f"annotation {SCALER}: expected one of {', '.join(SCALERS)}, got {ours[SCALER]!r}")
    if enabled != "true":
        if set(ours) - {ENABLED}:
            findings.warnings.append(f'annotations under {PREFIX} have no effect unless {ENABLED} is "true"')
        return findings
    service_class = ours.get(SERVICE_CLASS)
    if not service_class:
        findings.errors.append(
            f'annotation {SERVICE_CLASS} is required when {ENABLED} is "true" (one of: {", ".join(sorted(classes))})'
        )
    elif service_class not in classes:
        findings.errors.append(
            f"annotation {SERVICE_CLASS}: unknown service class {service_class!r} (one of: {', '.join(sorted(classes))})"
        )
    model = ours.get(MODEL)
    if model is not None and not NAME.match(model):
        findings.errors.append(f"annotation {MODEL}: {model!r} is not a valid model name")
    if ACCELERATORS in ours:
        types = [t.strip() for t in ours[ACCELERATORS].split(",")]
        bad = [t for t in types if not NAME.match(t)]
        if bad or not types:
            findings.errors.append(f"annotation {ACCELERATORS}: expected comma-separated GPU types, got {ours[ACCELERATORS]!r}")
    low = _whole(ours[MIN_REPLICAS], MIN_REPLICAS, findings, 0, REPLICAS_BOUND) if MIN_REPLICAS in ours else None
    high = _whole(ours[MAX_REPLICAS], MAX_REPLICAS, findings, 1, REPLICAS_BOUND) if MAX_REPLICAS in ours else None
    if low is not None and high is not None and low > high:
        findings.errors.append(f"annotations {MIN_REPLICAS} ({low}) must not exceed {MAX_REPLICAS} ({high})")
    if low == 0:
        findings.warnings.append(f"{MIN_REPLICAS} 0 allows scale to zero: the first request after idle waits for a cold start")
    if PROGRESS_DEADLINE in ours:
        _whole(ours[PROGRESS_DEADLINE], PROGRESS_DEADLINE, findings, 1, MAX_PROGRESS_DEADLINE_S, " seconds")
    knative_class = annotations.get(KNATIVE_CLASS)
    if knative_class and knative_class != OUR_KNATIVE_CLASS:
        findings.warnings.append(f"{KNATIVE_CLASS} {knative_class!r} is replaced by {OUR_KNATIVE_CLASS!r} for a managed ISVC")
    return findings
