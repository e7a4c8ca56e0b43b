"""Runs every policy over the same scenario and the same starting point."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..optimizer.domain import Load
from ..policy.guards import SCALE_DOWN_WINDOW_S, lookback_s
from .engine import Decision, SimulationResult, simulate
from .load_test import ReplicaCapacity, replica_capacity
from .policies.hpa import HorizontalPodAutoscaler, HpaSettings
from .policies.kpa import KnativePodAutoscaler, KpaSettings
from .policies.model_based import ModelBasedPolicy, ModelBasedSettings
from .policies.static import StaticPolicy
from .world import Scenario

POLICIES = ("ours", "knative-kpa", "hpa", "static-peak")
PLANNING_WINDOW_S = 60.0


@dataclass(frozen=True)
class RunSettings:
    control_period_s: float = 30.0
    jobs: int = 1


def _loads(scenario: Scenario, start: float, end: float) -> dict[int, Load]:
    """Per ISVC: the arrival rate and mean request sizes in [start, end) (the past's before 0)."""
    req = scenario.arrivals(start, end)
    loads = {}
    for index in range(len(scenario.world.isvcs)):
        in_window = req.isvc == index
        rate = in_window.sum() / (end - start)
        avg_in = round(req.in_tokens[in_window].mean()) if in_window.any() else 0
        avg_out = max(round(req.out_tokens[in_window].mean()), 1) if in_window.any() else 1
        loads[index] = Load(rate * 60.0, avg_in, avg_out)
    return loads


def peak_loads(scenario: Scenario) -> dict[int, Load]:
    """The busiest minute of each ISVC: what static provisioning is sized for."""
    return _busiest(scenario, 0.0, scenario.duration_s, PLANNING_WINDOW_S, _loads(scenario, 0.0, scenario.duration_s))


def _busiest(scenario: Scenario, start: float, end: float, interval_s: float, shapes: dict[int, Load]) -> dict[int, Load]:
    """Per ISVC: the rate of its busiest `interval_s` in [start, end), at the request shape given."""
    req = scenario.arrivals(start, end)
    intervals = int(math.ceil((end - start) / interval_s))
    loads = {}
    for index, shape in shapes.items():
        times = req.time[req.isvc == index] - start
        counts = np.bincount((times // interval_s).astype(int), minlength=intervals)
        loads[index] = Load(float(counts.max()) * 60.0 / interval_s, shape.avg_in_tokens, shape.avg_out_tokens)
    return loads


def _arrivals(scenario: Scenario, start: float, end: float) -> dict[int, np.ndarray]:
    """Per ISVC: the arrival times in [start, end), from `start`."""
    req = scenario.arrivals(start, end)
    return {i: req.time[req.isvc == i] - start for i in range(len(scenario.world.isvcs))}


def _recalled(scenario: Scenario, settings: RunSettings) -> list[tuple[float, dict[int, Load], dict[int, np.ndarray]]]:
    """The cycles ours' controller recalls of the scenario's past (planner.recall), oldest
    first: a period apart over the planner's lookback before the start, where the past reaches
    that far. Each reads the window after its time, as the opening does: the opening decides at
    time zero from the minute after it, as though it had watched that minute before."""
    window, period = PLANNING_WINDOW_S, settings.control_period_s
    back = min(lookback_s(window, period, scenario.world.cold_start_s), scenario.past_s)
    cycles = [-period * k for k in range(int(back // period), 0, -1)]
    return [(t, _loads(scenario, t, t + window), _arrivals(scenario, t, t + window)) for t in cycles]


def baseline_capacities(scenario: Scenario, jobs: int = 1) -> dict[int, ReplicaCapacity]:
    """The load test of every ISVC, in `jobs` processes."""
    indices = range(len(scenario.world.isvcs))
    if jobs <= 1:
        return {index: replica_capacity(scenario, index) for index in indices}
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return dict(zip(indices, pool.map(replica_capacity, [scenario] * len(indices), indices), strict=True))


# the tuning knob of each baseline, as `evaluate` sweeps it: the per-pod target of the reactive
# autoscalers as a share of the load-tested concurrency, static replicas as a share of the peak sizing
DEFAULT_KNOBS = {"knative-kpa": KpaSettings().target_utilization, "hpa": KpaSettings().target_utilization, "static-peak": 1.0}


def build_policy(
    name: str,
    scenario: Scenario,
    settings: RunSettings,
    capacities: dict[int, ReplicaCapacity],
    knob: float | None = None,
):
    """A policy and its deployment at time zero.

    Ours gets the optimizer and nothing measured but, where the scenario has a past, the cycles
    of it its controller recalls from Prometheus at its start (_recalled). The baselines are
    tuned from a load test of one replica on their GPU type: static provisioning holds enough
    replicas for the busiest minute, the reactive autoscalers target the concurrency one
    replica holds within the SLOs, both scaled by `knob` (default: DEFAULT_KNOBS).
    """
    world = scenario.world
    end = min(PLANNING_WINDOW_S, scenario.duration_s)
    opening = _loads(scenario, 0.0, end)
    if name == "ours":
        model_settings = ModelBasedSettings(period_s=settings.control_period_s)
        policy = ModelBasedPolicy(world, opening, model_settings, _arrivals(scenario, 0.0, end), _recalled(scenario, settings))
        return policy, policy.initial
    if name not in DEFAULT_KNOBS:
        raise ValueError(f"unknown policy {name!r} (one of {', '.join(POLICIES)})")
    knob = DEFAULT_KNOBS[name] if knob is None else knob
    if name == "static-peak":
        return StaticPolicy(), _on_default(scenario, _replicas_for(peak_loads(scenario), capacities, knob))
    # as if they had watched the opening minute too, as ours does: an HPA's count at its end is
    # its busiest sync's (its 300 s scale-down window holds the highest), KPA's panic window
    # is shorter still; at the minute's mean they missed a rise within it that ours reads. Where
    # the scenario has a past, they ran through it, as ours recalls it: the count holds the
    # busiest sync of the HPA's scale-down window, of KPA's stable window, the opening minute
    # the window's last (KPA's is no longer)
    held_s = SCALE_DOWN_WINDOW_S if name == "hpa" else KpaSettings().stable_window_s
    watched = _busiest(scenario, -min(max(held_s - end, 0.0), scenario.past_s), end, HpaSettings().sync_period_s, opening)
    initial = _on_default(scenario, _replicas_for(watched, capacities))
    per_pod = {i: max(c.concurrency, 1.0) * knob for i, c in capacities.items()}
    if name == "knative-kpa":  # KPA itself aims at its target utilisation of the target it is given
        return KnativePodAutoscaler({i: c / KpaSettings().target_utilization for i, c in per_pod.items()}), initial
    return HorizontalPodAutoscaler(per_pod), initial


def static_policy(scenario: Scenario, replicas: dict[int, int]):
    """Static provisioning with a given replica count per ISVC (the hindsight oracle)."""
    return StaticPolicy(), _on_default(scenario, replicas)


def _replicas_for(loads: dict[int, Load], capacities: dict[int, ReplicaCapacity], share: float = 1.0) -> dict[int, int]:
    return {
        i: max(math.ceil(share * load.arrival_rate_rpm / 60.0 / max(capacities[i].max_rate, 1e-9)), 1)
        for i, load in loads.items()
    }


def _on_default(scenario: Scenario, replicas: dict[int, int]) -> dict[int, Decision]:
    return {
        i: Decision(replicas[i], spec.default_accelerator, spec.options[spec.default_accelerator].max_num_seqs)
        for i, spec in enumerate(scenario.world.isvcs)
    }


def run_policy(
    scenario: Scenario,
    name: str,
    settings: RunSettings,
    capacities: dict[int, ReplicaCapacity],
    progress: Callable[[float], None] | None = None,
) -> SimulationResult:
    policy, initial = build_policy(name, scenario, settings, capacities)
    return simulate(scenario, policy, initial, progress)


def _run_in_worker(args) -> SimulationResult:
    return run_policy(*args)


def run_all(
    scenario: Scenario,
    policies: tuple[str, ...] = POLICIES,
    settings: RunSettings = RunSettings(),
    on_progress: Callable[[str, float], None] | None = None,
) -> list[SimulationResult]:
    """Every policy on the same traffic; `jobs` > 1 runs policies in parallel processes."""
    # ours needs no load test
    capacities = baseline_capacities(scenario, settings.jobs) if set(policies) - {"ours"} else {}
    if settings.jobs <= 1:
        results = []
        for name in policies:
            progress = (lambda t, n=name: on_progress(n, t)) if on_progress else None
            results.append(run_policy(scenario, name, settings, capacities, progress))
            if on_progress:
                on_progress(name, scenario.duration_s)
        return results
    with ProcessPoolExecutor(max_workers=settings.jobs) as pool:
        futures = [pool.submit(_run_in_worker, (scenario, name, settings, capacities)) for name in policies]
        results = []
        for name, future in zip(policies, futures, strict=True):
            results.append(future.result())
            if on_progress:
                on_progress(name, scenario.duration_s)
        return results
