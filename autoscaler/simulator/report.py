"""What each policy achieved: SLO attainment, tail latencies, GPU-hours, cost and churn."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from .engine import SimulationResult
from .world import Scenario

ALL_CLASSES = "all"


@dataclass(frozen=True)
class Outcome:
    policy: str
    service_class: str
    requests: int
    slo_met: int
    dropped: int
    p95_ttft_ms: float
    p95_itl_ms: float
    gpu_hours: float
    cost: float
    actions: int
    revisions: int  # GPU-type or batch changes (new revisions), every ISVC of the class together

    @property
    def attainment(self) -> float:
        return self.slo_met / self.requests if self.requests else 1.0

    @property
    def met_per_gpu_hour(self) -> float:
        return self.slo_met / self.gpu_hours if self.gpu_hours else 0.0


def request_latencies(scenario: Scenario, result: SimulationResult) -> tuple[np.ndarray, np.ndarray]:
    """Per request: TTFT and mean ITL in ms (nan where the request never started or finished)."""
    req = scenario.requests
    ttft = (result.first_token - req.time) * 1000.0
    decode_tokens = np.maximum(req.out_tokens - 1, 1)
    itl = np.where(req.out_tokens > 1, (result.finish - result.first_token) * 1000.0 / decode_tokens, 0.0)
    return ttft, np.where(np.isnan(result.finish), np.nan, itl)


def slo_met(scenario: Scenario, result: SimulationResult) -> np.ndarray:
    ttft, itl = request_latencies(scenario, result)
    world = scenario.world
    ttft_slo = np.array([world.classes[s.service_class].ttft_ms for s in world.isvcs])[scenario.requests.isvc]
    itl_slo = np.array([world.classes[s.service_class].itl_ms for s in world.isvcs])[scenario.requests.isvc]
    with np.errstate(invalid="ignore"):
        return (ttft <= ttft_slo) & (itl <= itl_slo)


def _p95(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, 95)) if finite.size else float("nan")


def outcomes(scenario: Scenario, results: list[SimulationResult]) -> list[Outcome]:
    world = scenario.world
    classes = list(world.classes) + [ALL_CLASSES]
    isvc_class = np.array([s.service_class for s in world.isvcs])
    rows = []
    for result in results:
        ttft, itl = request_latencies(scenario, result)
        met = slo_met(scenario, result)
        for cls in classes:
            isvcs = np.arange(len(world.isvcs)) if cls == ALL_CLASSES else np.flatnonzero(isvc_class == cls)
            if isvcs.size == 0:
                continue
            mine = np.isin(scenario.requests.isvc, isvcs)
            rows.append(
                Outcome(
                    policy=result.policy,
                    service_class=cls,
                    requests=int(mine.sum()),
                    slo_met=int(met[mine].sum()),
                    dropped=int(result.dropped[mine].sum()),
                    p95_ttft_ms=_p95(ttft[mine]),
                    p95_itl_ms=_p95(itl[mine]),
                    gpu_hours=float(result.gpu_hours[isvcs].sum()),
                    cost=float(result.cost[isvcs].sum()),
                    actions=int(result.actions[isvcs].sum()),
                    revisions=int(result.revisions[isvcs].sum()),
                )
            )
    return rows


def as_json(scenario: Scenario, rows: list[Outcome], wall_seconds: float) -> str:
    document = {
        "scenario": scenario.name,
        "duration_s": scenario.duration_s,
        "cold_start_s": scenario.world.cold_start_s,
        "requests": len(scenario.requests),
        "wall_seconds": round(wall_seconds, 3),
        "outcomes": [_finite(asdict(r) | {"attainment": r.attainment, "met_per_gpu_hour": r.met_per_gpu_hour}) for r in rows],
    }
    return json.dumps(document, indent=2, allow_nan=False)


def _finite(row: dict) -> dict:
    # a class with no finished request has no percentile: null, as JSON has no NaN
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()}


def table_rows(rows: list[Outcome]) -> list[tuple[str, ...]]:
    """Cells of the comparison table, one line per policy and class."""
    cells = []
    for r in rows:
        cells.append(
            (
                r.policy,
                r.service_class,
                f"{r.requests:,}",
                f"{100 * r.attainment:.1f}%",
                f"{r.p95_ttft_ms:,.0f}",
                f"{r.p95_itl_ms:.1f}",
                f"{r.dropped:,}",
                f"{r.gpu_hours:.1f}",
                f"${r.cost:,.2f}",
                f"{r.met_per_gpu_hour:,.0f}",
                str(r.actions),
            )
        )
    return cells


TABLE_HEADER = (
    "policy",
    "class",
    "requests",
    "SLO met",
    "p95 TTFT\nms",
    "p95 ITL\nms",
    "dropped",
    "GPU-h",
    "cost",
    "met/\nGPU-h",
    "actions",
)
