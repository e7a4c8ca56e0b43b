"""The planner's view of a managed ISVC and of the last decision made for it (which the
controller keeps in its own namespace, so a restarted controller resumes from the cluster)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields

from ..limits import MAX_MAGNITUDE, finite_problem, whole_problem

WHOLE_FIELDS = {"replicas", "max_batch", "avg_in_tokens", "avg_out_tokens"}
# the learned attainment bias (policy/sizing.py), a positive factor on the model's capacity:
# above 1 where the model underrates a replica, below where it overrates it
SCALE_FIELDS = {"ttft_scale", "itl_scale"}


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
    # the latency model as learned when this was decided (0: it did not size the ISVC)
    replica_capacity: float = 0.0  # requests/s one replica serves within the SLOs at the goal
    work_scale: float = 0.0  # of the (model, GPU type); the ISVC's bias is ttft_scale
    # the arrivals' rate variation it sized with (sizing.sized_variation; 0: Poisson)
    rate_variation: float = 0.0
    # the step costs it sized with (perfParms alpha, beta, gamma, ms): the profile's, or for a
    # model with no profile the identified prior's (policy/identify.py)
    step_ms: float = 0.0
    token_ms: float = 0.0
    kv_token_ms: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    def problem(self) -> str | None:
        """Why this decision must not be acted on or published (a value of the wrong type, not
        finite, or out of range), or None. The annotation is written by anyone who may edit the
        ISVC, and every decision the planner makes is checked the same way before it leaves."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "accelerator":
                problem = None if isinstance(value, str) and value else f"expected a GPU type name, got {value!r}"
            elif f.name in WHOLE_FIELDS:
                problem = whole_problem(value)
            elif f.name in SCALE_FIELDS:
                problem = finite_problem(value, 1.0 / MAX_MAGNITUDE, MAX_MAGNITUDE)
            else:
                problem = finite_problem(value)
            if problem:
                return f"{f.name}: {problem}"
        return None

    @classmethod
    def from_json(cls, text: str) -> "LastDecision":
        """The decision the stored document holds; a ValueError names the field at fault (someone
        edited it, or an older controller wrote it)."""
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError("expected a JSON object")
        missing = [f.name for f in fields(cls) if f.name not in document and f.default is MISSING]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        decision = cls(**{k: document[k] for k in cls.__dataclass_fields__ if k in document})
        problem = decision.problem()
        if problem:
            raise ValueError(problem)
        return decision


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

    def bounded(self, replicas: int) -> int:
        """`replicas` within the ISVC's minimum and maximum."""
        return min(max(replicas, self.min_replicas), self.max_replicas)
