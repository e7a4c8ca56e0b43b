"""Simulator fidelity: replay published vLLM measurements and print simulated vs published.

Run: python benchmarks/published_vllm.py [--shared ../shared] [--fit] [--mode v0-prefill-first]

The points (../shared/published-vllm/README.md): Llama-3-8B-Instruct on one H100, bursts of N
ShareGPT requests, vLLM 0.6.0 (V0, prefills first, 10 scheduler steps). Each burst is replayed
with that run's own requests (prompt and output lengths, handed to the engine in the order the
server prefilled them: autoscaler/data/published-vllm/runs.json) into one simulated server
(autoscaler/simulator/fidelity.py) with the
engine overheads in autoscaler/simulator/server.py (FITTED_OVERHEADS). --fit refits those
overheads by one least-squares fit over every statistic of every point and prints the fit and
its residuals; paste the values into FITTED_OVERHEADS. `--mode v1-chunked` shows what today's
default engine would do with the same requests (not comparable to the 2024 measurements).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from autoscaler.simulator.fidelity import STATISTICS, fit_overheads, load_published, relative_errors, replay_all
from autoscaler.simulator.server import FITTED_OVERHEADS, MODES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    parser.add_argument("--fit", action="store_true", help="refit the overheads first")
    parser.add_argument("--mode", choices=[m for m in MODES if m != "stall"], default="v0-prefill-first")
    args = parser.parse_args()
    published = load_published(args.shared / "published-vllm")
    overheads = FITTED_OVERHEADS
    if args.fit:
        started = time.perf_counter()
        overheads = fit_overheads(published, start=FITTED_OVERHEADS)
        print(f"fitted in {time.perf_counter() - started:.1f} s: {overheads}")
    simulated = replay_all(published, overheads, args.mode)
    errors = relative_errors(published, simulated)
    print(f"mode {args.mode}, overheads {overheads}")
    print(f"{'N':>5} " + " ".join(f"{name:>22}" for name in STATISTICS))
    for n in sorted(simulated):
        cells = [f"{s:8.1f} /{p:7.1f} {e:+4.0%}" for s, p, e in zip(simulated[n], published.points[n], errors[n], strict=True)]
        print(f"{n:>5} " + " ".join(f"{c:>22}" for c in cells))
    table = np.abs(np.array([errors[n] for n in sorted(errors)]))
    print(
        f"{'|err|':>5} "
        + " ".join(
            f"{'median ' + format(m, '.0%') + ' max ' + format(x, '.0%'):>22}"
            for m, x in zip(np.median(table, axis=0), table.max(axis=0), strict=True)
        )
    )
    residuals = np.concatenate([errors[n] for n in sorted(errors)])
    print(f"sum of squared relative errors {residuals @ residuals:.3f}; cells within 10%: {(table <= 0.10).sum()}/{table.size}")
    print("cells: simulated / published relative error; req/s, then ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
