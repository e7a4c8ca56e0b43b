"""Predicted vs simulated per-replica capacity at 95% SLO attainment, for every (model, GPU)
of the simulated world.

Predicted: autoscaler/policy/latency.py from what the planner knows (the profile's perfParms,
batch and KV limits, vLLM's token budget for the GPU, the mean request shape a collector
measures). Simulated: the load test of one replica (autoscaler/simulator/load_test.py) on the
same GPU with the ISVC's own request sizes, on the simulator's vLLM server (V1 chunked by
default).

    python benchmarks/latency_model.py [--requests 100000] [--jobs 2] [--only chat-8b,code-1b]
"""

from __future__ import annotations

import argparse
import dataclasses
from concurrent.futures import ProcessPoolExecutor

from autoscaler.policy.latency import Replica, Shape, capacity
from autoscaler.policy.sizing import token_budget
from autoscaler.simulator.load_test import MEASURED_REQUESTS, replica_capacity
from autoscaler.simulator.scenarios import build_scenario
from autoscaler.simulator.world import Scenario

GOAL = 0.95


def pairs(scenario: Scenario, only: set[str] | None = None) -> list[tuple[int, str]]:
    return [
        (index, accelerator)
        for index, spec in enumerate(scenario.world.isvcs)
        if only is None or spec.name in only
        for accelerator in spec.options
    ]


def on_gpu(scenario: Scenario, index: int, accelerator: str) -> Scenario:
    """The scenario with the ISVC's replicas on `accelerator` (the load test uses the default)."""
    isvcs = list(scenario.world.isvcs)
    isvcs[index] = dataclasses.replace(isvcs[index], default_accelerator=accelerator)
    return dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, isvcs=tuple(isvcs)))


def predicted(scenario: Scenario, index: int, accelerator: str) -> float:
    world = scenario.world
    spec = world.isvcs[index]
    option = spec.options[accelerator]
    mine = scenario.requests.isvc == index
    shape = Shape(float(scenario.requests.in_tokens[mine].mean()), float(scenario.requests.out_tokens[mine].mean()))
    budget = world.engine.max_num_batched_tokens or token_budget(accelerator)
    replica = Replica(option.params, option.max_num_seqs, option.truth.kv_cache_tokens, budget)
    cls = world.classes[spec.service_class]
    mode = "chunked" if world.engine.mode == "v1-chunked" else "stall"
    return capacity(replica, shape, cls.ttft_ms, cls.itl_ms, GOAL, mode)


def simulated(scenario: Scenario, index: int, accelerator: str, requests: int) -> float:
    start = predicted(scenario, index, accelerator) or 1.0
    return replica_capacity(on_gpu(scenario, index, accelerator), index, GOAL, start, measured_requests=requests).max_rate


def _simulated(args) -> float:
    return simulated(*args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=MEASURED_REQUESTS, help="requests per rate in the final load tests")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", help="comma-separated ISVC names")
    args = parser.parse_args()
    scenario = build_scenario("mixed", 1, 3600.0)
    chosen = pairs(scenario, set(args.only.split(",")) if args.only else None)
    with ProcessPoolExecutor(args.jobs) as pool:
        truth = list(pool.map(_simulated, [(scenario, i, a, args.requests) for i, a in chosen]))
    print("| ISVC | GPU | predicted req/s | simulated req/s | predicted / simulated |")
    print("|---|---|---:|---:|---:|")
    for (index, accelerator), true_rate in zip(chosen, truth, strict=True):
        guess = predicted(scenario, index, accelerator)
        name = scenario.world.isvcs[index].name
        print(f"| {name} | {accelerator} | {guess:.3f} | {true_rate:.3f} | {guess / true_rate:.3f} |")


if __name__ == "__main__":
    main()
