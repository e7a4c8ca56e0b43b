"""Predicted vs simulated per-replica capacity at 95% SLO attainment, for every (model, GPU)
of the simulated world.

Predicted: autoscaler/policy/latency.py from what the planner knows (the profile's perfParms,
batch and KV limits, vLLM's token budget for the GPU, the mean request shape a collector
measures); "identified": the same after the online identification's work scale, learned from
one simulated window of the replica at 90% of its predicted capacity (the mean ITL as vLLM's
histogram gives it: decode time over token gaps). Simulated: the load test of one replica
(autoscaler/simulator/load_test.py) on the same GPU with the ISVC's own request sizes, on the
simulator's vLLM server (V1 chunked by default).

    python benchmarks/latency_model.py [--requests 100000] [--jobs 2] [--only chat-8b,code-1b]
    python benchmarks/latency_model.py --no-profile steady,diurnal [--requests 100000] [--seed 2]
    python benchmarks/latency_model.py --identity granite-13b:diurnal:2 (mistral-7b:steady:1:20)
    python benchmarks/latency_model.py --fleet 1,2,4 [--workload azure-code] [--requests 20000] [--jobs 2]

--no-profile runs each ISVC alone under ours for 10 simulated minutes with no profile of its
model (the planner starts from the roofline prior, policy/prior.py, and identifies the step's
costs online, policy/identify.py) and compares the capacity it has learned with the load test
on the GPU type it was placed on, with the run's share of requests within both SLOs and drops.
--seed picks the run's traffic; the load test is seed 1's request sizes, as for every seed.

--fleet load-tests fleets of each size behind the simulator's router (least outstanding
requests, as Knative's activator, Istio's LEAST_REQUEST or the Gateway API inference
extension route) for each ISVC on its default GPU type, with the request sizes of the mixed
scenario or of an evaluation `--workload`: the rate a replica serves within the goal in each
fleet, against the model's one replica (which takes each replica as a Poisson share of the
load, exact for a router blind to load such as kube-proxy's).

It ends with the CPU cost of what the planner runs per ISVC: a capacity search (what a new
request shape or work scale costs, the planner caches it on a 2% grid) and the learning from one
window (work scale and attainment bias, sizing.learn).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from autoscaler.policy.latency import Replica, Shape, capacity, identify_work_scale
from autoscaler.optimizer.domain import Catalog, ModelProfile, ServiceClass, ServiceTarget
from autoscaler.policy.observation import Observation
from autoscaler.policy.sizing import Deployment, Learned, learn, per_replica_capacity, token_budget
from autoscaler.simulator.engine import Decision, Simulation
from autoscaler.simulator.load_test import MEASURED_REQUESTS, replica_capacity
from autoscaler.simulator.report import slo_met
from autoscaler.simulator.runner import RunSettings, build_policy
from autoscaler.simulator.policies.static import StaticPolicy
from autoscaler.simulator.traffic import Requests
from autoscaler.simulator.scenarios import build_scenario
from autoscaler.simulator.workloads import build_workload
from autoscaler.simulator.world import Scenario

GOAL = 0.95
LEARNING_LOAD = 0.9  # the window learned from: near capacity, where the planner runs a replica
NO_PROFILE_S = 600.0  # the bar: within 10% of the true capacity in 10 minutes


def pairs(scenario: Scenario, only: set[str] | None = None) -> list[tuple[int, str]]:
    return [
        (index, accelerator)
        for index, spec in enumerate(scenario.world.isvcs)
        if only is None or spec.name in only
        for accelerator in spec.options
    ]


def on_gpu(scenario: Scenario, index: int, accelerator: str, max_batch: int | None = None) -> Scenario:
    """The scenario with the ISVC's replicas on `accelerator` (the load test uses the default),
    at `max_batch` seats (None: the option's)."""
    isvcs = list(scenario.world.isvcs)
    spec = isvcs[index]
    if max_batch is not None:
        option = dataclasses.replace(spec.options[accelerator], max_num_seqs=max_batch)
        spec = dataclasses.replace(spec, options={**spec.options, accelerator: option})
    isvcs[index] = dataclasses.replace(spec, default_accelerator=accelerator)
    return dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, isvcs=tuple(isvcs)))


def _model(scenario: Scenario, index: int, accelerator: str) -> tuple[Replica, Shape, float, float, str]:
    world = scenario.world
    spec = world.isvcs[index]
    option = spec.options[accelerator]
    mine = scenario.requests.isvc == index
    shape = Shape(float(scenario.requests.in_tokens[mine].mean()), float(scenario.requests.out_tokens[mine].mean()))
    budget = world.engine.max_num_batched_tokens or token_budget(accelerator)
    replica = Replica(option.params, option.max_num_seqs, option.truth.kv_cache_tokens, budget, prefill=option.prefill)
    cls = world.classes[spec.service_class]
    mode = "chunked" if world.engine.mode == "v1-chunked" else "stall"
    return replica, shape, cls.ttft_ms, cls.itl_ms, mode


def predicted(scenario: Scenario, index: int, accelerator: str) -> float:
    replica, shape, ttft_ms, itl_ms, mode = _model(scenario, index, accelerator)
    return capacity(replica, shape, ttft_ms, itl_ms, GOAL, mode)


def identified(scenario: Scenario, index: int, accelerator: str, requests: int = 5_000) -> float:
    """Capacity after learning the work scale from one window of one replica at 90% of the
    predicted capacity, the ISVC's own sizes in Poisson arrivals."""
    replica, shape, ttft_ms, itl_ms, mode = _model(scenario, index, accelerator)
    rate = LEARNING_LOAD * capacity(replica, shape, ttft_ms, itl_ms, GOAL, mode)
    scale = identify_work_scale(replica, shape, rate, mean_itl(scenario, index, accelerator, rate, requests)) or 1.0
    return capacity(dataclasses.replace(replica, work_scale=scale), shape, ttft_ms, itl_ms, GOAL, mode)


def mean_itl(scenario: Scenario, index: int, accelerator: str, rate: float, requests: int = 5_000, replicas: int = 1) -> float:
    """The mean ITL (ms: vLLM's ITL histogram's sum over its count) of `replicas` replicas of
    the ISVC on `accelerator` at its option's batch, behind the simulator's load-aware router,
    under Poisson arrivals at `rate` req/s a replica of its own request sizes."""
    replica = _model(scenario, index, accelerator)[0]
    rng = np.random.default_rng(7)
    pick = rng.choice(np.flatnonzero(scenario.requests.isvc == index), requests)
    times = np.cumsum(rng.exponential(1.0 / (rate * replicas), requests))
    sizes_in, sizes_out = scenario.requests.in_tokens[pick], scenario.requests.out_tokens[pick]
    single = dataclasses.replace(
        on_gpu(scenario, index, accelerator),
        requests=Requests(times, np.zeros(requests, dtype=int), sizes_in, sizes_out),
        duration_s=float(times[-1]),
    )
    single = dataclasses.replace(single, world=dataclasses.replace(single.world, isvcs=(single.world.isvcs[index],)))
    result = Simulation(single, StaticPolicy(), {0: Decision(replicas, accelerator, replica.max_batch)}).run()
    done = ~result.dropped & (sizes_out > 1)
    return 1000.0 * float(np.sum(result.finish[done] - result.first_token[done]) / np.sum(sizes_out[done] - 1))


def simulated(scenario: Scenario, index: int, accelerator: str, requests: int, max_batch: int | None = None) -> float:
    start = predicted(scenario, index, accelerator) or 1.0
    placed = on_gpu(scenario, index, accelerator, max_batch)
    return replica_capacity(placed, index, GOAL, start, measured_requests=requests).max_rate


def _simulated(args) -> float:
    return simulated(*args)


def _in_fleet(args) -> float:
    """A replica's capacity in a fleet of `replicas` on the ISVC's default GPU type."""
    scenario, index, replicas, requests = args
    start = predicted(scenario, index, scenario.world.isvcs[index].default_accelerator) or 1.0
    return replica_capacity(scenario, index, GOAL, start, measured_requests=requests, replicas=replicas).max_rate


def fleet_table(scenario: Scenario, sizes: list[int], requests: int, jobs: int, only: set[str] | None) -> None:
    chosen = [i for i, spec in enumerate(scenario.world.isvcs) if only is None or spec.name in only]
    asked = [(scenario, i, n, requests) for i in chosen for n in sizes]
    with ProcessPoolExecutor(jobs) as pool:
        found = dict(zip([(i, n) for _, i, n, _ in asked], pool.map(_in_fleet, asked), strict=True))
    print(
        "| ISVC | GPU | model, one replica | "
        + " | ".join(f"simulated, {n} replica{'s' if n > 1 else ''}" for n in sizes)
        + " |\n|---|---|"
        + "---:|" * (len(sizes) + 1)
    )
    for i in chosen:
        spec = scenario.world.isvcs[i]
        one = found[(i, sizes[0])]
        cells = [f"{found[(i, n)]:.3f}" + ("" if n == sizes[0] else f" (x{found[(i, n)] / one:.3f})") for n in sizes]
        model = predicted(scenario, i, spec.default_accelerator)
        print(f"| {spec.name} | {spec.default_accelerator} | {model:.3f} | " + " | ".join(cells) + " |")


@dataclasses.dataclass(frozen=True)
class Unprofiled:
    """An ISVC run alone by ours with no profile of its model (module doc)."""

    accelerator: str  # the GPU type it was placed on
    max_batch: int  # the seats per replica it runs with (--max-num-seqs, as the optimizer chose)
    prior: float  # req/s per replica of its first decision (the roofline prior's)
    learned: float  # req/s per replica as learned at the end, at the ISVC's mean request
    reading: str  # how the step costs were read (identify.fit: the line, a light-load line, the prior scaled)
    met: float  # share of its requests within both SLOs
    dropped: int  # requests dropped (the client's timeout)


def _unprofiled_run(name: str, kind: str, duration_s: float, seed: int):
    """`name` of the `kind` scenario alone, its model with no profile, and ours' simulation of it."""
    scenario = alone(build_scenario(kind, seed, duration_s), name)
    spec = dataclasses.replace(scenario.world.isvcs[0], profiled=False)
    scenario = dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, isvcs=(spec,)))
    policy, initial = build_policy("ours", scenario, RunSettings(), {})
    return scenario, spec, policy, Simulation(scenario, policy, initial)


def unprofiled(name: str, kind: str = "steady", duration_s: float = NO_PROFILE_S, seed: int = 1) -> Unprofiled:
    """`name` of the `kind` scenario run alone by ours for `duration_s` with no profile of its
    model: the capacity of its first decision and the one learned by the end."""
    scenario, spec, policy, simulation = _unprofiled_run(name, kind, duration_s, seed)
    first = policy.last[0]
    result = simulation.run()
    last = policy.last[0]
    runs = Deployment(f"simulation/{spec.name}", spec.model, last.accelerator, last.max_batch)
    shape = Shape(float(scenario.requests.in_tokens.mean()), float(scenario.requests.out_tokens.mean()))
    target = policy.catalog.classes[spec.service_class].targets[spec.model]
    learned = per_replica_capacity(policy.state.learned, policy.catalog, runs, shape, target, GOAL)
    reading = policy.state.learned.identified[(spec.model, last.accelerator)].reading
    met = float(slo_met(scenario, result).mean())
    return Unprofiled(
        last.accelerator, last.max_batch, first.replica_capacity, learned or 0.0, reading, met, int(result.dropped.sum())
    )


def identity_windows(name: str, kind: str = "steady", duration_s: float = NO_PROFILE_S, seed: int = 1) -> None:
    """Per window of `unprofiled`'s run, what the identification's identity reads against the
    simulated truth: the mean ITL I, the decoding requests per replica B, I / S from vLLM's step
    count (S: the window over the steps), and the context the decodes read as the identity
    `I (1 - c P) = alpha (I / S) + (beta + gamma x context) B` gives it with the true costs, over
    the finished requests' mean prompt plus output that the window reports (policy/identify.py)."""
    scenario, spec, policy, simulation = _unprofiled_run(name, kind, duration_s, seed)
    seen: list = []
    steps: dict[float, int] = {}  # the simulated servers' step count at each observation
    observe, decide = policy.observer.observe, policy.decide

    def observing(now: float):
        steps[now] = simulation.steps[0].count
        seen.append([now, observe(now)[0], None])
        return [seen[-1][1]]

    def deciding(now: float, views):
        decisions = decide(now, views)
        seen[-1][2] = views[0].ready  # the observation decide() just made
        return decisions

    policy.observer.observe, policy.decide = observing, deciding
    simulation.run()
    truth = spec.options[policy.last[0].accelerator].truth
    alpha, beta, gamma = truth.linear_ms(0), truth.linear_ms(1) - truth.linear_ms(0), truth.kv_read_ms
    c = beta + gamma  # a prompt token's cost
    accelerator = policy.last[0].accelerator
    print(f"{name}, {kind} load, seed {seed}, on the {accelerator}, windows served by one fleet throughout:")
    print("window's end, replicas, I ms, B, I / S, context read / reported")
    for now, obs, ready in seen:
        fleets = {r for t, _, r in seen if now - obs.window_s < t <= now}
        start = steps.get(now - obs.window_s)
        if fleets != {ready} or not ready or obs.itl_ms is None or start is None or not obs.itl_gaps:
            continue
        steps_per_s = (steps[now] - start) / obs.window_s
        decodes = obs.itl_ms / 1000.0 * obs.itl_gaps / obs.window_s / ready
        if decodes < 1.0 or obs.avg_in_tokens is None or obs.avg_out_tokens is None:
            continue
        ratio = obs.itl_ms * steps_per_s / ready / 1000.0
        prompt = (obs.prompt_tokens_per_s or 0.0) / ready / 1000.0
        read = ((obs.itl_ms * (1.0 - c * prompt) - alpha * ratio) / decodes - beta) / gamma
        reported = obs.avg_in_tokens + obs.avg_out_tokens
        print(f"{now:6.0f} s {ready:3d} {obs.itl_ms:7.2f} {decodes:6.2f} {ratio:6.3f} {read / reported:6.2f}")


def alone(scenario: Scenario, name: str) -> Scenario:
    """The scenario with one ISVC and its requests only."""
    index = [s.name for s in scenario.world.isvcs].index(name)
    r = scenario.requests
    mine = r.isvc == index
    requests = Requests(r.time[mine], np.zeros(mine.sum(), dtype=int), r.in_tokens[mine], r.out_tokens[mine])
    world = dataclasses.replace(scenario.world, isvcs=(scenario.world.isvcs[index],))
    return dataclasses.replace(scenario, world=world, requests=requests)


def no_profile_table(kind: str, requests: int, seed: int = 1) -> None:
    """Each ISVC run alone with no profile (unprofiled, on `seed`'s traffic) against the load
    test on its GPU."""
    scenario = build_scenario(kind, 1, NO_PROFILE_S)
    print(f"\nNo profile, {kind} load, seed {seed}, {NO_PROFILE_S / 60:.0f} simulated minutes alone:")
    print(
        "| ISVC | GPU placed on | max batch | simulated req/s | prior | / simulated | learned | / simulated "
        "| step costs read off | SLO met | dropped |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for index, spec in enumerate(scenario.world.isvcs):
        run = unprofiled(spec.name, kind, seed=seed)
        # the truth of the replica as it runs: its GPU type and the batch the optimizer chose
        truth = simulated(scenario, index, run.accelerator, requests, run.max_batch)
        print(
            f"| {spec.name} | {run.accelerator} | {run.max_batch} | {truth:.3f} | {run.prior:.3f} | {run.prior / truth:.3f} "
            f"| {run.learned:.3f} | {run.learned / truth:.3f} | {run.reading} | {100 * run.met:.1f}% | {run.dropped} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=MEASURED_REQUESTS, help="requests per rate in the final load tests")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--only", help="comma-separated ISVC names")
    parser.add_argument("--no-profile", help="only the no-profile runs, under these loads (comma-separated: steady,diurnal,step)")
    parser.add_argument("--identity", metavar="ISVC:LOAD[:SEED[:MINUTES]]", help="a no-profile run's windows (identity_windows)")
    parser.add_argument("--seed", type=int, default=1, help="the no-profile runs' traffic")
    parser.add_argument("--fleet", help="comma-separated fleet sizes to load-test behind the router (the first is the base)")
    parser.add_argument("--workload", help="--fleet: an evaluation workload's request sizes (default: the mixed scenario's)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    if args.fleet:
        scenario = build_workload(args.workload) if args.workload else build_scenario("mixed", 1, 3600.0)
        fleet_table(scenario, [int(n) for n in args.fleet.split(",")], args.requests, args.jobs, only)
        return
    if args.identity:
        name, kind, *rest = args.identity.split(":")
        seed, minutes = (int(rest[0]) if rest else 1), (float(rest[1]) if len(rest) > 1 else NO_PROFILE_S / 60.0)
        identity_windows(name, kind, minutes * 60.0, seed)
        return
    if args.no_profile:
        for kind in args.no_profile.split(","):
            no_profile_table(kind, args.requests, args.seed)
        return
    scenario = build_scenario("mixed", 1, 3600.0)
    chosen = pairs(scenario, only)
    with ProcessPoolExecutor(args.jobs) as pool:
        truth = list(pool.map(_simulated, [(scenario, i, a, args.requests) for i, a in chosen]))
    print("| ISVC | GPU | simulated req/s | predicted (profile) | / simulated | identified online | / simulated |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (index, accelerator), true_rate in zip(chosen, truth, strict=True):
        guess, learned = predicted(scenario, index, accelerator), identified(scenario, index, accelerator)
        name = scenario.world.isvcs[index].name
        print(
            f"| {name} | {accelerator} | {true_rate:.3f} | {guess:.3f} | {guess / true_rate:.3f} "
            f"| {learned:.3f} | {learned / true_rate:.3f} |"
        )
    spent = [costs(scenario, index, accelerator) for index, accelerator in chosen]
    print(
        f"\nCPU per capacity search: {min(s for s, _ in spent):.1f}-{max(s for s, _ in spent):.1f} ms; "
        f"per window learned from: {min(w for _, w in spent):.2f}-{max(w for _, w in spent):.2f} ms"
    )


def costs(scenario: Scenario, index: int, accelerator: str, repeats: int = 50) -> tuple[float, float]:
    """CPU ms of one capacity search and of learning from one window (a steady window at 90% of
    the predicted capacity missing 1% of requests: both estimators move), each averaged."""
    replica, shape, ttft_ms, itl_ms, mode = _model(scenario, index, accelerator)
    start = time.process_time()
    for i in range(repeats):  # a new shape each time: no cache
        capacity(replica, Shape(shape.in_tokens * (1.0 + i / 1000.0), shape.out_tokens), ttft_ms, itl_ms, GOAL, mode)
    search = (time.process_time() - start) / repeats
    model = scenario.world.isvcs[index].model
    profile = ModelProfile(model, accelerator, 1, replica.max_batch, 0, replica.params, kv_cache_tokens=replica.kv_cache_tokens)
    target = ServiceTarget(itl_ms, ttft_ms)
    catalog = Catalog({}, {(model, accelerator): profile}, {"c": ServiceClass("c", 1, {model: target})})
    rate = LEARNING_LOAD * capacity(replica, shape, ttft_ms, itl_ms, GOAL, mode)
    count = rate * 60.0
    window = Observation(
        rate,
        rate,
        shape.in_tokens,
        shape.out_tokens,
        0.0,
        0.0,
        None,
        itl_ms * 0.6,
        ((ttft_ms / 1000.0, count), (float("inf"), count)),
        ((itl_ms / 1000.0, count * 0.99), (float("inf"), count)),
    )
    learned = Learned()
    start = time.process_time()
    for i in range(repeats):
        learn(learned, catalog, Deployment(f"isvc-{i}", model, accelerator, replica.max_batch), 1, window, target, GOAL)
    return search * 1000.0, (time.process_time() - start) / repeats * 1000.0


if __name__ == "__main__":
    main()
