"""Ours alone on `inference-autoscaler evaluate`'s workloads: a change to ours' planner moves
ours' point and none of the baselines' frontiers, so comparing ours' figures with the README's
frontier table takes seconds, not the suite's 15 minutes.

Run: python benchmarks/ours_alone.py square-2.5m:60 mmpp:120 [--seed 1] [--duration 3600]

Prints, per workload and cold start, the share of requests within their SLOs, GPU-hours, the
revisions ours made (GPU-type or batch changes) and each ISVC's share.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscaler.simulator.evaluate import Case, run_one  # noqa: E402
from autoscaler.simulator.workloads import WORKLOADS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", metavar="WORKLOAD:COLD_S")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args()
    for spec in args.cases:
        workload, _, cold = spec.partition(":")
        if workload not in WORKLOADS or not cold.replace(".", "", 1).isdigit():
            parser.error(f"{spec!r}: expected WORKLOAD:COLD_S, e.g. mmpp:60, the workload one of {', '.join(WORKLOADS)}")
        started = time.process_time()
        run = run_one(Case(workload, float(cold), args.seed, args.duration), "ours", None, {})
        shares = " ".join(f"{100 * share:.1f}" for share in run.isvc_attainment)
        print(
            f"{workload} cold {cold} s seed {args.seed}: {100 * run.attainment:.1f}% within SLOs, {run.gpu_hours:.2f} GPU-h, "
            f"{run.revisions} revisions; per ISVC {shares} ({time.process_time() - started:.0f} s CPU)"
        )


if __name__ == "__main__":
    main()
