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


class Scripted:
    """Applies fixed decisions at given times (a policy for engine tests)."""

    name = "scripted"
    period_s = 1.0

    def __init__(self, script: dict[float, Decision]):
        self.script = dict(script)

    def decide(self, now, views):
        due = sorted(t for t in self.script if t <= now)
        return {0: self.script.pop(due[-1])} if due else {}


def two_gpu_world(g: int, h: int, cold_start_s: float = 5.0) -> World:
    """The queue world's server on two GPU types G ($1/h) and H ($2/h)."""
    base = queue_world(8)
    option = base.isvcs[0].options["G"]
    options = {name: dataclasses.replace(option, accelerator=name) for name in ("G", "H")}
    spec = dataclasses.replace(base.isvcs[0], options=options, max_replicas=10)
    gpus = {"G": GpuType("G", 1.0, g), "H": GpuType("H", 2.0, h)}
    return dataclasses.replace(base, gpus=gpus, isvcs=(spec,), cold_start_s=cold_start_s)


def steady_requests(seconds: float, rate: float = 2.0) -> Requests:
    times = np.arange(0.5, seconds, 1.0 / rate)
    return Requests(times, np.zeros(times.size, dtype=int), np.ones(times.size, dtype=int), np.full(times.size, 5))


def test_initial_fleet_beyond_capacity_waits_for_gpus_and_is_never_billed_nan():
    scenario = Scenario("capacity", two_gpu_world(2, 1), steady_requests(300.0), 300.0)
    # five replicas wanted on two GPUs, then down to one, then up to four
    simulation = Simulation(scenario, Scripted({50.0: Decision(1), 150.0: Decision(4)}), {0: Decision(5, "G", 8)})
    replicas = simulation.isvcs[0].revisions[0].replicas
    assert sum(r.state == 1 for r in replicas) == 2  # only those holding a GPU serve at time zero
    result = simulation.run()
    assert result.peak_gpus == {"G": 2, "H": 0}
    assert np.all(np.isfinite(result.gpu_hours)) and np.all(np.isfinite(result.cost))
    # two cards for 50 s, one for 100 s, two for the last 150 s (scale-ups find a card at once)
    assert result.gpu_hours[0] * 3600 == pytest.approx(2 * 50 + 100 + 2 * 150, abs=1.0)


def test_default_world_never_holds_more_gpus_than_it_has(short_run):
    scenario, results = short_run
    for result in results:
        for gpu, held in result.peak_gpus.items():
            assert held <= scenario.world.gpus[gpu].capacity, (result.policy, gpu, held)
        assert np.all(np.isfinite(result.cost)), result.policy


def test_traffic_moves_to_the_new_revision_once_ready_and_the_old_one_scales_down():
    scenario = Scenario("rollout", two_gpu_world(2, 2, cold_start_s=5.0), steady_requests(120.0), 120.0)
    simulation = Simulation(scenario, Scripted({10.0: Decision(2, "H", 8)}), {0: Decision(2, "G", 8)})
    result = simulation.run()
    state = simulation.isvcs[0]
    assert [r.accelerator for r in state.revisions] == ["H"]
    assert simulation.free == {"G": 2, "H": 0}
    # G held 2 cards until H was ready at 15 s (its replicas held nothing): then H's two to the end
    assert result.cost[0] * 3600 == pytest.approx(2 * 15 * 1.0 + 2 * 110 * 2.0, abs=4.0)


def test_a_revision_without_gpus_does_not_freeze_the_serving_one():
    scenario = Scenario("stuck", two_gpu_world(4, 1), steady_requests(120.0), 120.0)
    # the new revision wants 3 H cards of 1: it never becomes ready; the serving one must still scale
    script = {10.0: Decision(3, "H", 8), 30.0: Decision(4)}
    simulation = Simulation(scenario, Scripted(script), {0: Decision(1, "G", 8)})
    simulation.run()
    serving, waiting = simulation.isvcs[0].revisions
    assert (serving.accelerator, waiting.accelerator) == ("G", "H")
    assert sum(r.state == 1 for r in serving.replicas) == 4
    assert not waiting.promoted and simulation.free["H"] == 0


def test_no_older_revision_is_stranded_holding_gpus():
    scenario = Scenario("stranded", two_gpu_world(2, 1), steady_requests(120.0), 120.0)
    # B (1 x H) is replaced by C (3 x G, never ready) before B is ready: B is unreachable
    script = {10.0: Decision(1, "H", 8), 12.0: Decision(3, "G", 4)}
    simulation = Simulation(scenario, Scripted(script), {0: Decision(1, "G", 8)})
    simulation.run()
    revisions = simulation.isvcs[0].revisions
    assert [(r.accelerator, r.max_batch) for r in revisions] == [("G", 8), ("G", 4)]
    assert simulation.free["H"] == 1


def test_billing_stops_at_the_end_of_the_run_for_every_replica():
    world = two_gpu_world(2, 1)
    # two long requests (100 s) keep both replicas busy; one of them drains past the end
    requests = Requests(np.array([1.0, 2.0]), np.array([0, 0]), np.array([1, 1]), np.array([50_000, 50_000]))
    scenario = Scenario("end", world, requests, 60.0)
    simulation = Simulation(scenario, Scripted({30.0: Decision(1)}), {0: Decision(2, "G", 8)})
    result = simulation.run()
    assert np.all(result.finish > 60.0)
    # both replicas billed to the end of the run, whether draining or not
    assert result.gpu_hours[0] * 3600 == pytest.approx(2 * 60.0)


@dataclasses.dataclass(frozen=True)
class FlatGpuSteps(ConstantSteps):
    """Every step STEP_MS on the GPU, for vLLM's engine model (server.VllmServer)."""

    kv_read_ms: float = 0.0

    def linear_ms(self, tokens: int) -> float:
        return STEP_MS


def test_each_isvcs_engine_steps_with_output_are_counted():
    base = queue_world(8)
    option = dataclasses.replace(base.isvcs[0].options["G"], truth=FlatGpuSteps())
    world = dataclasses.replace(base, isvcs=(dataclasses.replace(base.isvcs[0], options={"G": option}),), engine=EngineSettings())
    requests = steady_requests(60.0)  # one-token prompts, five tokens out, each alone on the replica
    simulation = Simulation(Scenario("steps", world, requests, 60.0), Scripted({}), {0: Decision(1, "G", 8)})
    simulation.run()
    # each request: the step that prefills it emits its first token, then four decode steps
    assert simulation.steps[0].count == 5 * len(requests)
    stall = Simulation(Scenario("stall", base, requests, 60.0), Scripted({}), {0: Decision(1, "G", 8)})
    stall.run()
    assert stall.steps[0].count == 0  # the stall model's steps are not vLLM's: none counted
