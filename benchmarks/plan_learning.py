"""The planner's CPU per cycle over 1,000 ISVCs with the latency model learning from every ISVC.

Run: python benchmarks/plan_learning.py [--isvcs 1000] [--cycles 8]

benchmarks/control_loop.py measures the whole controller, but its cycles come seconds apart, so
no ISVC has served a whole window and nothing is learned, and its emulated ISVCs keep one request
shape. Here plan() alone (what the controller's optimize phase runs) decides for ISVCs of the
simulated world's models, each settled on its GPU type, each window informative (a tenth of the
tokens past the ITL SLO, so both estimators move) and its mean request shape moving by up to 5%
per window, as a window's sample does: the capacity searches that a new shape or work scale costs
and the learning are both in the figures.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscaler.policy.decisions import LastDecision, ManagedService  # noqa: E402
from autoscaler.policy.observation import Observation  # noqa: E402
from autoscaler.policy.planner import PlannerState, plan  # noqa: E402
from autoscaler.simulator.planning import capacity, world_catalog  # noqa: E402
from autoscaler.simulator.scenarios import build_scenario  # noqa: E402

WINDOW_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isvcs", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=8)
    args = parser.parse_args()
    world = build_scenario("mixed", 1, 3600.0).world
    catalog = world_catalog(world)
    gpus = {name: count * args.isvcs for name, count in capacity(world).items()}  # room for all
    rng = random.Random(1)
    services, loads = [], []
    for i in range(args.isvcs):
        spec = world.isvcs[i % len(world.isvcs)]
        gpu = spec.default_accelerator
        rate = rng.uniform(1.0, 6.0)
        last = LastDecision(gpu, 3, spec.options[gpu].max_num_seqs, 100.0, 20.0, rate, 10.0, 1.0, 1100, 210, spec_changed_at=1.0)
        allowed = frozenset(spec.options)
        services.append(ManagedService("ns", f"isvc-{i}", spec.model, spec.service_class, allowed, 1, 40, True, True, last))
        loads.append((rate, rng.uniform(800.0, 1400.0), rng.uniform(150.0, 260.0)))
    state = PlannerState()
    print(f"plan() over {args.isvcs} ISVCs, every one learning each window, shapes moving up to 5%:")
    for cycle in range(args.cycles):
        observed = {}
        for service, (rate, prompt, output) in zip(services, loads, strict=True):
            count, moved = rate * WINDOW_S, 1.0 + rng.uniform(-0.05, 0.05)
            ttft = ((1.0, count * 0.99), (float("inf"), count))
            itl = ((0.025, count * 0.85), (0.05, count * 0.9), (float("inf"), count))  # per request, by its mean gap
            observed[("ns", service.name)] = Observation(
                rate, rate, prompt * moved, output * moved, 3.0, 0.0, 150.0, 18.0, ttft, itl, ready_replicas=3
            )
        start = time.process_time()
        plans = plan(catalog, gpus, services, observed, 1000.0 + WINDOW_S * cycle, state)
        spent = time.process_time() - start
        windows = sum(e.windows for e in state.learned.bias.values())
        decided = sum(p.decision is not None for p in plans)
        print(f"cycle {cycle}: {spent * 1000:6.0f} ms CPU, {decided} decided, windows learned so far {windows}")


if __name__ == "__main__":
    main()
