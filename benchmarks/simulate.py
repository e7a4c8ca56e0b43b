"""Simulator throughput: one hour of traffic, 10 ISVCs, 100 req/s in total, every policy.

Run: python benchmarks/simulate.py [--jobs 1] [--rate 100] [--isvcs 10]

The embedded world's five ISVCs are doubled (capacity doubled too) and given diurnal traffic
summing to the requested rate, request sizes from the Azure traces. The run includes the
baselines' load tests. Prints wall time and requests simulated per second, serially and with
the policies spread over processes, in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

from autoscaler.simulator.runner import POLICIES, RunSettings, run_all
from autoscaler.simulator.scenarios import ISVCS, rate_shape, default_world
from autoscaler.simulator.traffic import Requests, builtin_trace, poisson_arrivals, sized
from autoscaler.simulator.world import Scenario

DURATION_S = 3600.0


def scenario(isvc_count: int, total_rate: float, seed: int = 11) -> Scenario:
    base = default_world()
    copies = -(-isvc_count // len(base.isvcs))
    isvcs = tuple(dataclasses.replace(spec, name=f"{spec.name}-{c}") for c in range(copies) for spec in base.isvcs)[:isvc_count]
    gpus = {name: dataclasses.replace(gpu, capacity=gpu.capacity * copies) for name, gpu in base.gpus.items()}
    world = dataclasses.replace(base, isvcs=isvcs, gpus=gpus)
    rng = np.random.default_rng(seed)
    traces = {source: builtin_trace(source) for source in ("code", "conv")}
    weights = np.array([ISVCS[i % len(ISVCS)][4] for i in range(isvc_count)])
    seconds = np.arange(int(DURATION_S), dtype=float)
    shape = rate_shape("diurnal", seconds, DURATION_S, rng)
    parts = []
    for index in range(isvc_count):
        rate = total_rate * weights[index] / weights.sum() / shape.mean()
        source = ISVCS[index % len(ISVCS)][3]
        parts.append(sized(poisson_arrivals(rate * shape, rng), index, traces[source], rng))
    return Scenario("benchmark", world, Requests.merge(parts), DURATION_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="total requests/second")
    parser.add_argument("--isvcs", type=int, default=10)
    args = parser.parse_args()

    built = time.perf_counter()
    world_scenario = scenario(args.isvcs, args.rate)
    build_s = time.perf_counter() - built
    requests = len(world_scenario.requests)
    print(
        f"{args.isvcs} ISVCs, {requests:,} requests in {DURATION_S / 3600:g} h ({requests / DURATION_S:.1f} req/s), "
        f"{len(POLICIES)} policies; traffic built in {build_s:.2f} s"
    )
    print(f"{'processes':>9} {'wall s':>8} {'requests simulated/s':>21}")
    for jobs in (1, 2):
        start = time.perf_counter()
        run_all(world_scenario, POLICIES, RunSettings(jobs=jobs))
        wall = time.perf_counter() - start
        print(f"{jobs:>9} {wall:>8.1f} {requests * len(POLICIES) / wall:>21,.0f}")
    print("goal: all policies over the hour in under 60 s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
