"""How fast the optimizer solves a large problem, against a naive per-candidate loop.

Run: python benchmarks/optimize.py [--copies 40] [--naive-servers 27]

1. Inferno's large sample (27 servers) replicated 40x: 1,080 servers, capacity x40.
2. The same 1,080 servers with every server's request shape (input/output tokens) made
   distinct, so no two servers share a sizing problem: the worst case for our row sharing.
3. The naive baseline (autoscaler.optimizer.reference: one candidate at a time, every state of
   the chain in Python, bisection) timed on the unreplicated sample, beside our optimizer on
   that same sample; the ratio is printed, and the naive time for case 1 extrapolated per candidate.
4. Large batch: the unreplicated sample with one server's requests cut to one output token, so
   its batch limit is maxBatchSize x atTokens (156,672 for mistral_7b on MI300X). Time and peak
   memory (tracemalloc: Python and numpy allocations during the solve) are printed; with
   --whole-chain also for the chain stored whole (MAX_WIDTH raised to the batch limit, as before
   the width was bounded: several GB).
Pinned to one core (BLAS threads = 1) as the goal is stated for one core.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse
import dataclasses
import random
import sys
import time
import tracemalloc
from pathlib import Path

from autoscaler.cli import embedded_problem
from autoscaler.optimizer import queueing, reference
from autoscaler.optimizer.domain import System
from autoscaler.optimizer.loader import load_system
from autoscaler.optimizer.sizing import size_candidates
from autoscaler.optimizer.solver import solve


def replicate(system: System, copies: int) -> System:
    servers = tuple(dataclasses.replace(s, name=f"{s.name}-{i}") for i in range(copies) for s in system.servers)
    capacity = {t: n * copies for t, n in system.capacity.items()}
    return dataclasses.replace(system, servers=servers, capacity=capacity)


def distinct_shapes(system: System, seed: int = 7) -> System:
    rng = random.Random(seed)
    servers = tuple(
        dataclasses.replace(
            s,
            load=dataclasses.replace(
                s.load,
                avg_in_tokens=s.load.avg_in_tokens + rng.randint(1, 64),
                avg_out_tokens=s.load.avg_out_tokens + rng.randint(1, 64),
            ),
        )
        for s in system.servers
    )
    return dataclasses.replace(system, servers=servers)


def one_output_token(system: System, model: str = "mistral_7b") -> System:
    """The first server of `model` asks for one output token: the largest batch limit there is."""
    index = next(i for i, s in enumerate(system.servers) if s.model == model)
    servers = list(system.servers)
    servers[index] = dataclasses.replace(servers[index], load=dataclasses.replace(servers[index].load, avg_out_tokens=1))
    return dataclasses.replace(system, servers=tuple(servers))


def peak_memory(fn) -> int:
    """Peak bytes allocated (Python and numpy) while fn runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def best_time(fn, repeats: int, clock=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def naive_solve_time(system: System) -> tuple[float, int]:
    """Size every candidate with the scalar reference; returns (seconds, candidates)."""
    start = time.perf_counter()
    count = 0
    for server in system.servers:
        target = system.classes[server.class_name].targets[server.model]
        load = server.load
        for acc in system.accelerators:
            profile = system.profiles.get((server.model, acc))
            if profile is None:
                continue
            max_batch = profile.batch_limit(load.avg_in_tokens, load.avg_out_tokens)
            reference.size(
                profile.params,
                load.avg_in_tokens,
                load.avg_out_tokens,
                max_batch,
                target.ttft_ms,
                target.itl_ms,
                target.tps,
                load.arrival_rate_rpm / 60,
                server.min_replicas,
            )
            count += 1
    return time.perf_counter() - start, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", type=Path, default=embedded_problem(), help="Inferno problem to replicate")
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--whole-chain", action="store_true", help="also solve the large batch with the chain stored whole")
    args = parser.parse_args()

    base = load_system(args.problem)
    cases = [(f"replicated x{args.copies}", replicate(base, args.copies))]
    cases.append(("distinct shapes", distinct_shapes(cases[0][1])))
    print(f"{'case':<18} {'servers':>8} {'candidates':>11} {'seconds':>9}")
    results = {}
    for label, system in cases:
        candidates = sum(len(v) for v in size_candidates(system).values())
        seconds = best_time(lambda system=system: solve(system), args.repeats)
        results[label] = (len(system.servers), candidates, seconds)
        print(f"{label:<18} {len(system.servers):>8} {candidates:>11} {seconds:>9.3f}")

    ours_small = best_time(lambda: solve(base), args.repeats)
    naive_small, naive_candidates = naive_solve_time(base)
    per_candidate = naive_small / naive_candidates
    servers, candidates, seconds = results[cases[0][0]]
    print()
    print(
        f"naive per-candidate loop on the {len(base.servers)}-server sample: "
        f"{naive_small:.2f} s for {naive_candidates} candidates"
    )
    print(f"our optimizer on the same sample:            {ours_small:.4f} s  -> {naive_small / ours_small:,.0f}x faster")
    print(
        f"naive extrapolated to {servers} servers:      {per_candidate * candidates:.0f} s "
        f"({candidates} candidates x {per_candidate * 1000:.1f} ms) "
        f"-> {per_candidate * candidates / seconds:,.0f}x slower than ours"
    )
    goal = 1.0
    verdict = "meets" if seconds < goal else "MISSES"
    print(f"goal: {servers} servers in under {goal:.0f} s on one core: {seconds:.3f} s, {verdict} it")

    large = one_output_token(base)
    limit = max(a.max_batch for allocs in size_candidates(large).values() for a in allocs)
    print()
    print(f"large batch: {len(large.servers)} servers, one with batch limit {limit:,}")
    bounded = queueing.MAX_WIDTH
    for label, width in [("bounded", bounded)] + ([("whole chain", limit)] if args.whole_chain else []):
        queueing.MAX_WIDTH = width
        seconds = best_time(lambda: solve(large), min(args.repeats, 3))
        cpu = best_time(lambda: solve(large), min(args.repeats, 3), clock=time.process_time)
        peak = peak_memory(lambda: solve(large))
        print(f"  {label:<12} stored width {width:>7,}: {seconds:6.2f} s ({cpu:.2f} s CPU), peak memory {peak / 2**20:8.1f} MiB")
    queueing.MAX_WIDTH = bounded
    return 0


if __name__ == "__main__":
    sys.exit(main())
