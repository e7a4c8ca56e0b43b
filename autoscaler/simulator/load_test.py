"""Tunes the baselines as a platform engineer would: by load-testing one replica.

For each ISVC on its default GPU type, bisect the largest Poisson arrival rate one replica
serves with the attainment goal met (TTFT and ITL), using the ISVC's own request sizes. The
mean number of requests in flight at that rate is the per-pod concurrency the reactive
autoscalers target; the rate itself sizes static provisioning. The same test of a fleet of
several replicas behind the simulator's router (least outstanding requests) measures what
pooling their queues is worth per replica (benchmarks/latency_model.py --fleet).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .engine import CLIENT_TIMEOUT_S, Decision, Simulation
from .policies.static import StaticPolicy
from .report import slo_met
from .traffic import Requests
from .world import Scenario

COARSE_REQUESTS = 2_000  # per rate tried while bracketing the capacity to 10%
MEASURED_REQUESTS = 100_000  # per rate tried while narrowing it down to PRECISION
WARM_UP_SHARE = 0.1  # the first requests of each run fill the replica and are not measured
PRECISION = 0.01  # relative width of the final bracket


@dataclass(frozen=True)
class ReplicaCapacity:
    max_rate: float  # requests/second one replica serves within the attainment goal
    concurrency: float  # mean requests in flight at that rate


@dataclass(frozen=True)
class _Stream:
    """Unit-rate Poisson arrivals and request sizes: every rate tried replays the same stream
    scaled in time (common random numbers), so attainment falls with the rate without noise
    from one rate's draw to the next."""

    unit_times: np.ndarray
    in_tokens: np.ndarray
    out_tokens: np.ndarray


def _stream(scenario: Scenario, index: int, count: int, seed: int) -> _Stream:
    """Sizes cycle through the ISVC's own requests in shuffled rounds, so every seed tests the
    same mix of sizes (heavy-tailed prompts drawn with replacement made a seed's mix, and its
    capacity, several % off)."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(scenario.requests.isvc == index)
    rounds = -(-count // pool.size)
    pick = np.concatenate([rng.permutation(pool) for _ in range(rounds)])[:count]
    return _Stream(np.cumsum(rng.exponential(1.0, count)), scenario.requests.in_tokens[pick], scenario.requests.out_tokens[pick])


def _attainment(scenario: Scenario, index: int, rate: float, *, stream: _Stream, replicas: int = 1) -> tuple[float, float]:
    """(share of SLO-met requests, mean in flight per replica) of `replicas` replicas at a
    Poisson rate of `rate` each."""
    world = scenario.world
    spec = world.isvcs[index]
    times = stream.unit_times / (rate * replicas)
    requests = Requests(times, np.zeros(times.size, dtype=int), stream.in_tokens, stream.out_tokens)
    duration = float(times[-1])
    single = Scenario("load-test", dataclasses.replace(world, isvcs=(spec,)), requests, duration)
    option = spec.options[spec.default_accelerator]
    simulation = Simulation(single, StaticPolicy(), {0: Decision(replicas, spec.default_accelerator, option.max_num_seqs)})
    result = simulation.run()
    warm_up = int(times.size * WARM_UP_SHARE)
    met = slo_met(single, result)[warm_up:].mean()
    # Little's law: in flight = rate x time in the system (a dropped request's lasted the timeout)
    sojourn = np.where(result.dropped, CLIENT_TIMEOUT_S, result.finish - times)[warm_up:]
    return float(met), float(rate * sojourn.mean())


Measure = Callable[[float], tuple[float, float]]  # rate -> (attainment, mean in flight)


def _narrow(measure: Measure, goal: float, low: float, high: float, precision: float) -> float:
    """The largest rate meeting the goal in [low, high] (low > 0 meets it, high does not), to
    the relative precision. Attainment falls smoothly with the rate under common random
    numbers, so each round interpolates where it crosses the goal and tries just either side
    of that, which closes the bracket in a few runs where bisection needs one per halving."""
    while high - low > precision * high:
        f_low, f_high = measure(low)[0] - goal, measure(high)[0] - goal
        guess = high - f_high * (high - low) / (f_high - f_low) if f_low != f_high else (low + high) / 2
        step = precision * guess / 2
        for rate in (guess - step, guess + step):
            if low < rate < high:
                if measure(rate)[0] >= goal:
                    low = rate
                else:
                    high = rate
                    break
    return low


def _bracket(measure: Measure, goal: float, start: float, factor: float) -> tuple[float, float]:
    """(low, high) with low meeting the goal and high not, found by stepping from `start` by
    `factor`; low is 0 where even start / factor**12 misses."""
    previous = rate = start
    if measure(rate)[0] >= goal:
        while rate < 1e4:
            previous, rate = rate, rate * factor
            if measure(rate)[0] < goal:
                return previous, rate
        return rate, rate
    for _ in range(12):
        previous, rate = rate, rate / factor
        if measure(rate)[0] >= goal:
            return rate, previous
    return 0.0, rate


def replica_capacity(
    scenario: Scenario,
    index: int,
    goal: float = 0.95,
    upper_rate: float = 50.0,
    seed: int = 0,
    measured_requests: int = MEASURED_REQUESTS,
    replicas: int = 1,
) -> ReplicaCapacity:
    """The largest rate one replica serves within the goal, to PRECISION: bracketed to 10% with
    short runs, then narrowed with long ones (the bracket moved where the short runs misjudged).
    Fewer `measured_requests` trade precision for time (a quick check). With `replicas` > 1, the
    rate each of that many serves behind the router, each seeing as many requests as one would."""
    if not (scenario.requests.isvc == index).any():
        return ReplicaCapacity(math.inf, 1.0)  # no traffic to test with: one replica carries it
    estimate = upper_rate
    for count, stream_seed, start_factor, step, precision in (
        (COARSE_REQUESTS, seed, 1.0, 2.0, 0.1),
        (measured_requests, seed + 1, 1.03, 1.05, PRECISION),
    ):
        stream = _stream(scenario, index, count * replicas, stream_seed)
        measure = functools.lru_cache(maxsize=None)(
            functools.partial(_attainment, scenario, index, stream=stream, replicas=replicas)
        )
        low, high = _bracket(measure, goal, estimate * start_factor, step)
        if low == 0.0:  # even a trickle misses: the smallest rate tried stands
            return ReplicaCapacity(high, measure(high)[1])
        estimate = _narrow(measure, goal, low, high, precision)
    return ReplicaCapacity(estimate, measure(estimate)[1])
