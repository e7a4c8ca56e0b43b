"""The discrete-event engine against queueing theory, conservation of requests and seeding."""

import dataclasses
import math

import numpy as np
import pytest

from autoscaler.optimizer.domain import IterationParams
from autoscaler.optimizer.queueing import ChainBatch
from autoscaler.simulator.engine import Decision, Simulation
from autoscaler.simulator.policies.static import StaticPolicy
from autoscaler.simulator.report import request_latencies
from autoscaler.simulator.runner import RunSettings, run_all
from autoscaler.simulator.scenarios import build_scenario
from autoscaler.simulator.server import EngineSettings
from autoscaler.simulator.traffic import Requests, poisson_arrivals
from autoscaler.simulator.world import ClassSpec, GpuType, IsvcSpec, Scenario, ServingOption, World

STEP_MS = 2.0  # every decode step takes this long, whatever the batch


@dataclasses.dataclass(frozen=True)
class ConstantSteps:
    """Decode steps of fixed length and free prefill: each running request completes at a
    constant rate per step, so a batch of c behaves as c exponential servers (prefill stalls,
    which real batches have, would couple them)."""

    kv_cache_tokens: int = 10**9

    def decode_step_ms(self, batch: int, mean_context: float) -> float:
        return STEP_MS

    def prefill_ms(self, tokens: int) -> float:
        return 0.0


def queue_world(max_batch: int) -> World:
    option = ServingOption("G", ConstantSteps(), IterationParams(STEP_MS, 0.0, 0.0), max_batch)
    spec = IsvcSpec("q", "m", "c", {"G": option}, "G", min_replicas=1, max_replicas=1)
    # the earlier stall model: its decode steps are exactly STEP_MS and prefill free, so queueing
    # theory holds exactly (vLLM's engine adds a prefill step and its overheads to every request)
    return World(
        {"G": GpuType("G", 1.0, 1)}, {"c": ClassSpec("c", 1, 1e9, 1e9)}, (spec,), cold_start_s=1.0, engine=EngineSettings("stall")
    )


def run_queue(max_batch: int, rate: float, mean_tokens: float, seconds: float, seed: int = 3):
    rng = np.random.default_rng(seed)
    times = poisson_arrivals(np.full(int(seconds), rate), rng)
    tokens = rng.geometric(1.0 / mean_tokens, times.size) + 1  # service = (tokens - 1) * STEP: ~exponential
    requests = Requests(times, np.zeros(times.size, dtype=int), np.ones(times.size, dtype=int), tokens)
    scenario = Scenario("queue", queue_world(max_batch), requests, seconds)
    result = Simulation(scenario, StaticPolicy(), {0: Decision(1, "G", max_batch)}).run()
    response = result.finish - requests.time
    service = (tokens - 1) * STEP_MS / 1000.0
    warm = requests.time > 60.0
    return response[warm], service


def test_single_slot_server_is_mm1():
    mean_tokens, rate = 100.0, 3.5  # service 0.2 s mean, utilisation 0.7
    response, service = run_queue(1, rate, mean_tokens, 4000.0)
    mu = 1.0 / service.mean()
    # geometric token counts are exponential to within 1/mean: Pollaczek-Khinchine holds exactly
    es2 = np.mean(service**2)
    expected = service.mean() + rate * es2 / (2 * (1 - rate / mu))
    assert response.mean() == pytest.approx(expected, rel=0.05)
    assert response.mean() == pytest.approx(1.0 / (mu - rate), rel=0.06)  # the M/M/1 mean
    # and our queueing model for a batch of one, with a queue long enough to lose nothing
    chain = ChainBatch(np.array([[mu / 1000.0]]), np.array([1]), queue_ratio=500)
    model = chain.solve(np.array([0]), np.array([rate / 1000.0]))
    assert response.mean() == pytest.approx(model.resp_time[0] / 1000.0, rel=0.06)


def erlang_c_mean_response(servers: int, rate: float, mu: float) -> float:
    load = rate / mu
    rho = load / servers
    top = load**servers / math.factorial(servers) / (1 - rho)
    p_wait = top / (sum(load**k / math.factorial(k) for k in range(servers)) + top)
    return p_wait / (servers * mu - rate) + 1.0 / mu


def test_continuous_batch_of_four_is_mmc():
    mean_tokens, rate = 100.0, 16.0  # four slots of 5 req/s each, utilisation 0.8
    response, service = run_queue(4, rate, mean_tokens, 3000.0)
    assert response.mean() == pytest.approx(erlang_c_mean_response(4, rate, 1.0 / service.mean()), rel=0.06)


@pytest.fixture(scope="module")
def short_run():
    scenario = build_scenario("bursty", seed=5, duration_s=600.0)
    return scenario, run_all(scenario, settings=RunSettings())


def test_every_request_finishes_or_is_counted_dropped(short_run):
    scenario, results = short_run
    for result in results:
        finished = ~np.isnan(result.finish)
        assert np.all(finished ^ result.dropped), result.policy
        ttft, itl = request_latencies(scenario, result)
        assert np.all(ttft[finished] >= 0) and np.all(itl[finished] >= 0)
        assert np.all(result.finish[finished] >= result.first_token[finished])
        assert np.all(result.gpu_hours > 0) and np.all(result.cost > 0)


def test_same_seed_same_results_other_seed_other_traffic(short_run):
    scenario, results = short_run
    again = run_all(build_scenario("bursty", seed=5, duration_s=600.0), settings=RunSettings())
    for first, second in zip(results, again, strict=True):
        assert np.array_equal(first.finish, second.finish, equal_nan=True)
        assert np.array_equal(first.cost, second.cost)
    other = build_scenario("bursty", seed=6, duration_s=600.0)
    assert len(other.requests) != len(scenario.requests) or not np.array_equal(other.requests.time, scenario.requests.time)


def test_parallel_jobs_give_the_same_results(short_run):
    scenario, results = short_run
    parallel = run_all(scenario, settings=RunSettings(jobs=2))
    for first, second in zip(results, parallel, strict=True):
        assert first.policy == second.policy
        assert np.array_equal(first.finish, second.finish, equal_nan=True)


def test_replicas_wait_for_gpus_and_are_billed_only_with_one():
    world = queue_world(8)
    world = dataclasses.replace(
        world, gpus={"G": GpuType("G", 3.6, 2)}, isvcs=(dataclasses.replace(world.isvcs[0], max_replicas=5),)
    )
    requests = Requests(np.array([1.0]), np.array([0]), np.array([1]), np.array([5]))
    scenario = Scenario("capacity", world, requests, 3600.0)
    result = Simulation(scenario, StaticPolicy(), {0: Decision(5, "G", 8)}).run()
    # five replicas asked for, two GPUs exist: two are billed for the hour, the rest never start
    assert result.gpu_hours[0] == pytest.approx(2.0)
    assert result.cost[0] == pytest.approx(7.2)
    assert result.series_replicas.max() == 2
