"""Tunes the baselines as a platform engineer would: by load-testing one replica.

For each ISVC on its default GPU type, bisect the largest Poisson arrival rate one replica
serves with the attainment goal met (TTFT and ITL), using the ISVC's own request sizes. The
mean number of requests in flight at that rate is the per-pod concurrency the reactive
autoscalers target; the rate itself sizes static provisioning.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .engine import Decision, Simulation
from .policies.static import StaticPolicy
from .report import slo_met
from .traffic import Requests, poisson_arrivals
from .world import Scenario

WARM_UP_S = 60.0
MEASURE_S = 240.0
BISECTION_STEPS = 7


@dataclass(frozen=True)
class ReplicaCapacity:
    max_rate: float  # requests/second one replica serves within the attainment goal
    concurrency: float  # mean requests in flight at that rate


def _attainment(scenario: Scenario, index: int, rate: float, seed: int) -> tuple[float, float]:
    """(share of SLO-met requests, mean in flight) of one replica at a Poisson rate."""
    world = scenario.world
    spec = world.isvcs[index]
    rng = np.random.default_rng(seed)
    duration = WARM_UP_S + MEASURE_S
    times = poisson_arrivals(np.full(int(duration), rate), rng)
    mine = scenario.requests.isvc == index
    pick = rng.integers(0, int(mine.sum()), times.size)
    requests = Requests(
        times, np.zeros(times.size, dtype=int), scenario.requests.in_tokens[mine][pick], scenario.requests.out_tokens[mine][pick]
    )
    single = Scenario("load-test", dataclasses.replace(world, isvcs=(spec,)), requests, duration)
    option = spec.options[spec.default_accelerator]
    simulation = Simulation(single, StaticPolicy(), {0: Decision(1, spec.default_accelerator, option.max_num_seqs)})
    result = simulation.run()
    measured = requests.time >= WARM_UP_S
    met = slo_met(single, result)[measured].mean() if measured.any() else 1.0
    samples = list(simulation.isvcs[0].samples)[int(WARM_UP_S) :]
    return float(met), float(np.mean(samples)) if samples else 0.0


def replica_capacity(
    scenario: Scenario, index: int, goal: float = 0.95, upper_rate: float = 50.0, seed: int = 0
) -> ReplicaCapacity:
    if not (scenario.requests.isvc == index).any():
        return ReplicaCapacity(math.inf, 1.0)  # no traffic to test with: one replica carries it
    low, high = 0.0, upper_rate
    best = ReplicaCapacity(0.0, 0.0)
    # widen the bracket until one replica fails the goal
    while _attainment(scenario, index, high, seed)[0] >= goal and high < 1e4:
        low, high = high, high * 2
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        met, concurrency = _attainment(scenario, index, mid, seed)
        if met >= goal:
            low, best = mid, ReplicaCapacity(mid, concurrency)
        else:
            high = mid
    if best.max_rate == 0.0:  # even a trickle misses: the smallest rate tried stands
        met, concurrency = _attainment(scenario, index, low or high / 2**BISECTION_STEPS, seed)
        best = ReplicaCapacity(low or high / 2**BISECTION_STEPS, concurrency)
    return best
