"""Timing of the whole evaluation suite, beside the default `simulate` on one core.

Run: python benchmarks/evaluate.py [--jobs 2] [--skip-suite]

First the default `inference-autoscaler simulate` (one hour of the mixed scenario, four
policies, the baselines' load tests included) in one process: the goal is under 60 s on one
core. Then `inference-autoscaler evaluate` over the whole suite (every workload of SUITE at cold
starts 60 and 120 s: ours, the HPA/KPA/static tuning grids and the hindsight oracle) with
`--jobs` processes, with the number of runs and of requests simulated per second.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse
import sys
import time

from autoscaler.simulator import evaluate as suite
from autoscaler.simulator.runner import POLICIES, RunSettings, run_all
from autoscaler.simulator.scenarios import build_scenario
from autoscaler.simulator.workloads import SUITE, build_workload

COLD_STARTS = (60.0, 120.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--skip-suite", action="store_true", help="time only the default simulate")
    args = parser.parse_args()

    started = time.perf_counter()
    run_all(build_scenario(), POLICIES, RunSettings(jobs=1))
    print(f"default simulate, one process: {time.perf_counter() - started:.1f} s (goal < 60 s)")
    if args.skip_suite:
        return 0

    started = time.perf_counter()
    results = suite.evaluate(SUITE, COLD_STARTS, jobs=args.jobs)
    wall = time.perf_counter() - started
    runs = sum(1 + sum(len(f) for f in r.families.values()) + 1 for r in results)
    requests = sum(len(build_workload(w).requests) for w in SUITE) * len(COLD_STARTS)
    print(
        f"suite: {len(SUITE)} workloads x {len(COLD_STARTS)} cold starts, {runs} runs (+ oracle bisection and load tests), "
        f"{wall:.0f} s with {args.jobs} processes; ~{requests * runs / len(results) / wall:,.0f} requests simulated/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
