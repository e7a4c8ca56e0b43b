"""Repeatability of the baselines' load test: each ISVC's capacity with three seeds.

Run: python benchmarks/load_test.py [--seeds 0,10,20] [--duration 600]

Prints, per ISVC of the default `mixed` scenario (its request sizes), the rate one replica
serves within 95% attainment and the concurrency at that rate for each seed, their spread
((max - min) / min) and the wall time. The goal: a spread of 1-2%.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse
import sys
import time

from autoscaler.simulator.load_test import replica_capacity
from autoscaler.simulator.scenarios import build_scenario


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,10,20")
    parser.add_argument("--duration", type=float, default=600.0, help="of the scenario whose request sizes are tested")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    scenario = build_scenario("mixed", 1, args.duration)
    print(f"{'ISVC':<12} {'req/s per seed':<28} {'spread':>7} {'concurrency':<22} {'wall s':>7}")
    for index, spec in enumerate(scenario.world.isvcs):
        started = time.perf_counter()
        capacities = [replica_capacity(scenario, index, seed=seed) for seed in seeds]
        rates = [c.max_rate for c in capacities]
        print(
            f"{spec.name:<12} {' '.join(f'{r:8.3f}' for r in rates):<28} {100 * (max(rates) - min(rates)) / min(rates):6.2f}% "
            f"{' '.join(f'{c.concurrency:6.1f}' for c in capacities):<22} {time.perf_counter() - started:7.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
