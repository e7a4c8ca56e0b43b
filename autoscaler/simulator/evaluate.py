"""The Pareto comparison: ours against every baseline over a grid of its tuning, per workload.

For each workload of the suite and each cold start: ours once; HPA and KPA with per-pod targets
of 0.4-1.2x the load-tested concurrency; static provisioning at 0.6-1.2x its peak sizing; and
the hindsight oracle, static sized per ISVC as the fewest replicas that met the attainment goal
over the whole run (found by bisection over whole runs, all ISVCs at once). Runs go to `jobs`
processes; every run is seeded, so the figures do not depend on the number of processes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from .engine import simulate
from .load_test import ReplicaCapacity, replica_capacity
from .pareto import Point, attainment_at, frontier, gpu_hours_for
from .report import slo_met
from .runner import RunSettings, build_policy, peak_loads, static_policy
from .workloads import build_workload

FAMILIES = ("hpa", "knative-kpa", "static-peak")
KNOBS = {
    "hpa": (0.4, 0.6, 0.8, 1.0, 1.2),
    "knative-kpa": (0.4, 0.6, 0.8, 1.0, 1.2),
    "static-peak": (0.6, 0.8, 1.0, 1.2),
}
ORACLE = "oracle"
GOAL = 0.95  # the attainment the oracle is sized for, and the one GPU-hours are reported at


@dataclass(frozen=True)
class Case:
    workload: str
    cold_start_s: float
    seed: int
    duration_s: float


@dataclass(frozen=True)
class RunSummary:
    policy: str
    knob: float | None
    requests: int
    slo_met: int
    gpu_hours: float
    cost: float
    isvc_attainment: tuple[float, ...]
    revisions: int = 0  # GPU-type or batch changes, every ISVC together

    @property
    def attainment(self) -> float:
        return self.slo_met / self.requests if self.requests else 1.0

    @property
    def point(self) -> Point:
        return Point(self.gpu_hours, self.attainment, self.knob)


@dataclass
class CaseResult:
    case: Case
    ours: RunSummary
    families: dict[str, list[RunSummary]] = field(default_factory=dict)
    oracle: RunSummary | None = None
    oracle_replicas: tuple[int, ...] = ()


@functools.lru_cache(maxsize=4)
def _scenario(case: Case):
    return build_workload(case.workload, case.seed, case.duration_s, case.cold_start_s)


def _summary(case: Case, policy_name: str, knob: float | None, built) -> RunSummary:
    scenario = _scenario(case)
    policy, initial = built
    result = simulate(scenario, policy, initial)
    met = slo_met(scenario, result)
    isvc = scenario.requests.isvc
    per_isvc = tuple(float(met[isvc == i].mean()) if (isvc == i).any() else 1.0 for i in range(len(scenario.world.isvcs)))
    return RunSummary(
        policy_name,
        knob,
        len(met),
        int(met.sum()),
        float(result.gpu_hours.sum()),
        float(result.cost.sum()),
        per_isvc,
        int(result.revisions.sum()),
    )


def run_one(case: Case, policy: str, knob: float | None, capacities: dict[int, ReplicaCapacity]) -> RunSummary:
    """One policy (ours or a baseline at one knob) on one case; a process-pool task."""
    built = build_policy(policy, _scenario(case), RunSettings(), capacities, knob)
    return _summary(case, policy, knob, built)


def run_static(case: Case, replicas: tuple[int, ...]) -> RunSummary:
    scenario = _scenario(case)
    return _summary(case, ORACLE, None, static_policy(scenario, dict(enumerate(replicas))))


def _capacity(case: Case, index: int) -> ReplicaCapacity:
    return replica_capacity(_scenario(case), index)


class _Inline(Executor):
    """Runs tasks in this process (--jobs 1): the same code path as the pool."""

    def submit(self, fn, /, *args, **kwargs):
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def evaluate(
    workloads: Iterable[str],
    cold_starts: Iterable[float],
    seed: int = 1,
    duration_s: float = 3600.0,
    jobs: int = 1,
    on_progress: Callable[[str], None] | None = None,
) -> list[CaseResult]:
    cases = [Case(w, c, seed, duration_s) for w in workloads for c in cold_starts]
    say = on_progress or (lambda _: None)
    with ProcessPoolExecutor(max_workers=jobs) if jobs > 1 else _Inline() as pool:
        # the load test does not depend on the cold start (one warm replica): once per workload
        tested = {c.workload: c for c in cases}
        isvcs = range(len(_scenario(cases[0]).world.isvcs))
        futures = {(w, i): pool.submit(_capacity, c, i) for w, c in tested.items() for i in isvcs}
        capacities = {w: {i: futures[(w, i)].result() for i in isvcs} for w in tested}
        say(f"load tests done for {len(tested)} workloads")
        grid = {
            (case, policy, knob): pool.submit(run_one, case, policy, knob, capacities[case.workload])
            for case in cases
            for policy, knobs in (("ours", (None,)), *KNOBS.items())
            for knob in knobs
        }
        results = []
        for case in cases:
            ours = grid[(case, "ours", None)].result()
            result = CaseResult(case, ours)
            for policy, knobs in KNOBS.items():
                result.families[policy] = [grid[(case, policy, knob)].result() for knob in knobs]
            results.append(result)
            say(f"{case.workload}, cold start {case.cold_start_s:g} s: grid done")
        _oracles(pool, results, capacities)
        say("oracles done")
    return results


@dataclass
class _Bisection:
    """The fewest replicas of one ISVC meeting GOAL: `low` misses, `high` meets once `checked`."""

    low: int
    high: int
    most: int
    checked: bool = False

    def trial(self) -> int | None:
        if self.high - self.low > 1:
            return (self.low + self.high) // 2
        return None if self.checked else self.high

    def record(self, replicas: int, met: bool) -> None:
        if met:
            self.high, self.checked = replicas, True
        elif replicas < self.high:
            self.low = replicas
        elif self.high >= self.most:  # even the most replicas allowed miss: they stand
            self.checked = True
        else:  # the upper end itself misses: widen it
            self.low, self.high = self.high, min(self.high * 2, self.most)


def _oracles(pool: Executor, results: list[CaseResult], capacities) -> None:
    """Per case and ISVC, the fewest static replicas meeting GOAL, bisected with every case's
    runs of a round in parallel. The upper end starts at the largest static run of the grid."""
    searches = {}
    for result in results:
        scenario = _scenario(result.case)
        peak = peak_loads(scenario)
        tested = capacities[result.case.workload]
        share = max(KNOBS["static-peak"])
        searches[result.case] = [
            _Bisection(
                0,
                min(max(math.ceil(share * peak[i].arrival_rate_rpm / 60 / tested[i].max_rate), 1), spec.max_replicas),
                spec.max_replicas,
            )
            for i, spec in enumerate(scenario.world.isvcs)
        ]
    while True:
        trials = {
            case: [b.trial() for b in isvcs] for case, isvcs in searches.items() if any(b.trial() is not None for b in isvcs)
        }
        if not trials:
            break
        futures = {
            case: pool.submit(
                run_static, case, tuple(b.high if t is None else t for b, t in zip(searches[case], tried, strict=True))
            )
            for case, tried in trials.items()
        }
        for case, future in futures.items():
            run = future.result()
            for search, tried, met in zip(searches[case], trials[case], run.isvc_attainment, strict=True):
                if tried is not None:
                    search.record(tried, met >= GOAL)
    finals = {case: tuple(b.high for b in isvcs) for case, isvcs in searches.items()}
    futures = {case: pool.submit(run_static, case, replicas) for case, replicas in finals.items()}
    for result in results:
        result.oracle = futures[result.case].result()
        result.oracle_replicas = finals[result.case]


@dataclass(frozen=True)
class Standing:
    """Where ours stands against one family's frontier."""

    family: str
    attainment_at_ours_gpu_hours: float | None  # None: the family has no run that cheap
    gpu_hours_for_ours_attainment: float | None  # None: no run of the family attains that much
    cheapest_beats_ours: bool  # the family's cheapest run already attains what ours does
    gpu_hours_for_goal: float | None


def standings(result: CaseResult) -> list[Standing]:
    ours = result.ours
    rows = []
    for family, runs in result.families.items():
        front = frontier(run.point for run in runs)
        rows.append(
            Standing(
                family,
                attainment_at(front, ours.gpu_hours),
                gpu_hours_for(front, ours.attainment),
                bool(front) and front[0].attainment >= ours.attainment,
                gpu_hours_for(front, GOAL),
            )
        )
    return rows


def as_document(results: list[CaseResult]) -> dict:
    """Every run and standing, for --json."""

    def run(summary: RunSummary) -> dict:
        return {
            "policy": summary.policy,
            "knob": summary.knob,
            "attainment": summary.attainment,
            "gpu_hours": summary.gpu_hours,
            "cost": summary.cost,
            "met_per_gpu_hour": summary.slo_met / summary.gpu_hours if summary.gpu_hours else 0.0,
            "revisions": summary.revisions,
        }

    return {
        "goal": GOAL,
        "cases": [
            {
                "workload": r.case.workload,
                "cold_start_s": r.case.cold_start_s,
                "duration_s": _scenario(r.case).duration_s,
                "requests": r.ours.requests,
                "ours": run(r.ours),
                "families": {f: [run(s) for s in runs] for f, runs in r.families.items()},
                "oracle": run(r.oracle) | {"replicas": list(r.oracle_replicas)} if r.oracle else None,
                "standings": [s.__dict__ for s in standings(r)],
            }
            for r in results
        ],
    }


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _hours(value: float | None, at_most: bool = False) -> str:
    return "—" if value is None else f"{'≤' if at_most else ''}{value:.1f}"


FAMILY_LABELS = {"hpa": "HPA", "knative-kpa": "KPA", "static-peak": "static"}
TABLE_HEADER = (
    "workload",
    "cold s",
    "ours SLO met · GPU-h",
    *(f"{FAMILY_LABELS[f]}: SLO met at ours' GPU-h · GPU-h for ours' SLO met" for f in FAMILIES),
    "oracle SLO met · GPU-h",
    f"GPU-h for {100 * GOAL:.0f}%: HPA / KPA / static / oracle",
)


def table_rows(results: list[CaseResult]) -> list[tuple[str, ...]]:
    rows = []
    for r in results:
        ours = r.ours
        cells = [r.case.workload, f"{r.case.cold_start_s:g}", f"{_percent(ours.attainment)} · {ours.gpu_hours:.1f}"]
        goal_cells = []
        for s in standings(r):
            cells.append(
                f"{_percent(s.attainment_at_ours_gpu_hours)} · {_hours(s.gpu_hours_for_ours_attainment, s.cheapest_beats_ours)}"
            )
            goal_cells.append(_hours(s.gpu_hours_for_goal))
        oracle = r.oracle
        cells.append(f"{_percent(oracle.attainment)} · {oracle.gpu_hours:.1f}" if oracle else "—")
        goal_cells.append(f"{oracle.gpu_hours:.1f}" if oracle and oracle.attainment >= GOAL else "—")
        cells.append(" / ".join(goal_cells))
        rows.append(tuple(cells))
    return rows


def markdown_table(results: list[CaseResult]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * 2 + "---:|" * (len(TABLE_HEADER) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def summary_counts(results: list[CaseResult]) -> dict[str, tuple[int, int]]:
    """Per family: in how many cases its frontier beats ours (more than half a point more
    attainment at ours' GPU-hours) and in how many ours beats it (the family needs 2% more
    GPU-hours for ours' attainment, or never reaches it); the rest are level."""
    counts = {}
    for family in FAMILIES:
        beaten = ahead = 0
        for r in results:
            s = next(x for x in standings(r) if x.family == family)
            if s.attainment_at_ours_gpu_hours is not None and s.attainment_at_ours_gpu_hours > r.ours.attainment + 0.005:
                beaten += 1
            elif s.gpu_hours_for_ours_attainment is None or (
                not s.cheapest_beats_ours and s.gpu_hours_for_ours_attainment > 1.02 * r.ours.gpu_hours
            ):
                ahead += 1
        counts[family] = (beaten, ahead)
    return counts
