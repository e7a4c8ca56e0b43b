"""The figures each decision yields, with their labels: one definition for both the adapter's
external metrics and the controller's Prometheus exposition."""

from __future__ import annotations

from typing import Iterable

from .limits import MAX_MAGNITUDE, finite_problem, whole_problem
from .proto import decisions_pb2 as pb

PROMETHEUS_PREFIX = "inference_autoscaler_"

# external metric name -> (help text, value of a decision)
FIGURES = {
    "desired_replicas": ("Replicas the optimizer wants for the ISVC or revision", lambda d: d.desired_replicas),
    "arrival_rate": ("Measured arrival rate, requests per second", lambda d: d.arrival_rate),
    "cost_per_hour": ("Cost per hour of the desired allocation", lambda d: d.cost_per_hour),
    "ttft_slo_headroom": ("1 - predicted TTFT / SLO at the desired allocation", lambda d: d.ttft_headroom),
    "itl_slo_headroom": ("1 - predicted ITL / SLO at the desired allocation", lambda d: d.itl_headroom),
    "replica_capacity": (
        "Requests per second one replica serves within the SLOs, by the latency model as learned (0: not sized by it)",
        lambda d: d.replica_capacity,
    ),
    "work_scale": (
        "Learned work of the model on its GPU type over its profile's (0: not sized by the model)",
        lambda d: d.work_scale,
    ),
    "capacity_bias": ("Learned attainment bias on the model's capacity (0: not sized by the model)", lambda d: d.capacity_bias),
    "rate_variation": (
        "Squared coefficient of variation of the arrival rate over seconds, beyond Poisson, that the model sizes with"
        " (0: Poisson, or not sized by the model)",
        lambda d: d.rate_variation,
    ),
    "step_ms": ("Fixed cost of a vLLM step the model sized with, ms (identified online without a profile)", lambda d: d.step_ms),
    "token_ms": ("Cost per token of a step the model sized with, ms", lambda d: d.token_ms),
    "kv_token_ms": ("Cost per token of KV context read in a step the model sized with, ms", lambda d: d.kv_token_ms),
}


# 9999-12-31T23:59:59Z: the adapter writes decided_at as an RFC 3339 timestamp, which has four
# year digits (as has Python's datetime); a later one would fail every answer that carries it
LATEST_TIMESTAMP = 253_402_300_799.0
WHOLE = ("desired_replicas", "max_batch")  # int32 on the wire: only the sign to check
RANGES = {
    "arrival_rate": (0.0, MAX_MAGNITUDE),
    "cost_per_hour": (0.0, MAX_MAGNITUDE),
    "ttft_headroom": (-MAX_MAGNITUDE, 1.0),  # 1 - predicted / SLO: at most 1
    "itl_headroom": (-MAX_MAGNITUDE, 1.0),
    "decided_at": (0.0, LATEST_TIMESTAMP),
    "replica_capacity": (0.0, MAX_MAGNITUDE),
    "work_scale": (0.0, MAX_MAGNITUDE),
    "capacity_bias": (0.0, MAX_MAGNITUDE),
    "rate_variation": (0.0, MAX_MAGNITUDE),
    "step_ms": (0.0, MAX_MAGNITUDE),
    "token_ms": (0.0, MAX_MAGNITUDE),
    "kv_token_ms": (0.0, MAX_MAGNITUDE),
}


def decision_problem(decision: pb.Decision) -> str | None:
    """Why a decision must not be published or served (a value not finite or out of range), or
    None. Both ends of the stream check: the controller before publishing, the adapter on
    receipt (its feed must survive whatever arrives)."""
    if not decision.namespace or not decision.isvc:
        return "no namespace or ISVC name"
    problems = [(name, whole_problem(getattr(decision, name))) for name in WHOLE]
    problems += [(name, finite_problem(getattr(decision, name), low, high)) for name, (low, high) in RANGES.items()]
    return next((f"{name}: {problem}" for name, problem in problems if problem), None)


def labels_of(decision: pb.Decision) -> dict[str, str]:
    labels = {
        "isvc": decision.isvc,
        "model": decision.model,
        "accelerator": decision.accelerator,
        "class": decision.service_class,
    }
    if decision.revision:
        labels["revision"] = decision.revision
    return labels


def figures_of(decision: pb.Decision) -> dict[str, float]:
    return {name: float(value(decision)) for name, (_, value) in FIGURES.items()}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(decisions: Iterable[pb.Decision]) -> str:
    """Prometheus text format (0.0.4) of every figure of every decision."""
    decisions = list(decisions)
    lines = []
    for name, (help_text, value) in FIGURES.items():
        full = PROMETHEUS_PREFIX + name
        lines += [f"# HELP {full} {help_text}", f"# TYPE {full} gauge"]
        for d in decisions:
            labels = {"namespace": d.namespace} | labels_of(d)
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{full}{{{rendered}}} {float(value(d))!r}")
    return "\n".join(lines) + "\n"
