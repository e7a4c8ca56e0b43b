"""The planner's view of a managed ISVC and of the last decision made for it (which the
controller keeps in its own namespace, so a restarted controller resumes from the cluster)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LastDecision:
    accelerator: str
    replicas: int
    max_batch: int
    ttft_ms: float
    itl_ms: float
    arrival_rate: float  # requests/second measured
    cost: float  # per hour
    decided_at: float  # unix seconds of the last decision made from fresh data
    avg_in_tokens: int = 0
    avg_out_tokens: int = 0
    ttft_scale: float = 1.0
    itl_scale: float = 1.0
    spec_changed_at: float = 0.0  # when the GPU type or batch size was last rolled out

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LastDecision | None":
        """None for a missing or unreadable decision (someone edited it): we decide afresh."""
        try:
            fields = json.loads(text)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__ if k in fields})
        except (ValueError, TypeError, KeyError):
            return None


def material(decision: LastDecision | None) -> tuple | None:
    """The parts of a decision whose change is worth recording. Predicted latencies and measured
    rates move a little every cycle; rewriting 1,000 ISVCs for that would load the API server
    for nothing, so they are recorded when the decision itself changes."""
    if decision is None:
        return None
    return (
        decision.accelerator,
        decision.replicas,
        decision.max_batch,
        decision.ttft_scale,
        decision.itl_scale,
        decision.spec_changed_at,
    )


@dataclass(frozen=True)
class ManagedService:
    namespace: str
    name: str
    model: str
    service_class: str
    accelerators: frozenset[str]
    min_replicas: int
    max_replicas: int
    raw_deployment: bool
    spec_changes: bool
    last: LastDecision | None
    uid: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
