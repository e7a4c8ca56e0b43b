"""One replica's vLLM engine model (simulator/server.py) against vLLM's scheduling rules, and the
whole simulator against published vLLM measurements."""

import math
from pathlib import Path

import numpy as np
import pytest

from autoscaler.simulator.fidelity import STATISTICS, fit_overheads, load_published, relative_errors, replay_all
from autoscaler.simulator.server import (
    BLOCK_SIZE,
    FITTED_OVERHEADS,
    EngineSettings,
    Ledger,
    Overheads,
    StallServer,
    Steps,
    VllmServer,
    blocks,
)

STEP_MS = 10.0
NONE = Overheads()  # no CPU costs: steps cost only what the step times say
PUBLISHED = Path(__file__).resolve().parents[1].parent / "shared" / "published-vllm"


class FlatSteps:
    """Every step costs STEP_MS whatever it holds; records the tokens of each step it prices."""

    kv_read_ms = 0.0

    def __init__(self, kv_cache_tokens: int = 10**6):
        self.kv_cache_tokens = kv_cache_tokens
        self.tokens: list[int] = []

    def linear_ms(self, tokens: int) -> float:
        self.tokens.append(tokens)
        return STEP_MS

    def decode_step_ms(self, batch: int, mean_context: float) -> float:
        return STEP_MS

    def prefill_ms(self, tokens: int) -> float:
        return 5.0 + 0.01 * tokens


class Run:
    """Drives one server as the engine does: arrivals and the server's own wake-ups in time order."""

    def __init__(
        self, requests, *, mode="v1-chunked", budget=8192, max_num_seqs=256, kv_tokens=10**6, stall=False, steps=1, overheads=NONE
    ):
        self.arrival = [float(a) for a, _, _ in requests]
        self.first = [math.nan] * len(requests)
        self.finish = [math.nan] * len(requests)
        self.times = FlatSteps(kv_tokens)
        ledger = Ledger(
            self.arrival, [i for _, i, _ in requests], [o for _, _, o in requests], self.first, self._finished, self._dropped, 1e9
        )
        if stall:
            self.server = StallServer(self.times, ledger, max_num_seqs=max_num_seqs)
        else:
            settings = EngineSettings(mode, overheads=overheads, num_scheduler_steps=steps)
            self.server = VllmServer(settings, self.times, ledger, max_num_seqs=max_num_seqs, budget=budget)
        self.running_seen: list[int] = []

    def _finished(self, request, time):
        self.finish[request] = time

    def _dropped(self, request):
        raise AssertionError(f"request {request} dropped")

    def until(self, end=math.inf, after_wake=None):
        order = sorted(range(len(self.arrival)), key=self.arrival.__getitem__)
        pending = [r for r in order if self.arrival[r] > getattr(self, "_now", -1.0)]
        while True:
            arrival = self.arrival[pending[0]] if pending else math.inf
            wake = self.server.next_event
            now = min(arrival, wake)
            if now > end or now == math.inf:
                return self
            self._now = now
            if wake <= arrival:
                self.server.wake(now)
                self.running_seen.append(len(getattr(self.server, "running", ())))
                if after_wake:
                    after_wake(now, self.server)
            else:
                self.server.submit(pending.pop(0), now)


def test_token_budget_is_respected_in_every_step():
    rng = np.random.default_rng(4)
    sizes = zip(rng.uniform(0, 0.5, 40), rng.integers(1, 300, 40), rng.integers(1, 60, 40), strict=True)
    requests = [(float(t), int(i), int(o)) for t, i, o in sizes]
    run = Run(requests, budget=64, max_num_seqs=16).until()
    assert max(run.times.tokens) <= 64
    assert max(run.times.tokens) == 64  # long prompts do fill the budget
    assert not np.isnan(run.finish).any() and np.all(np.array(run.finish) >= np.array(run.first))


def test_chunked_prefill_shares_steps_with_decodes():
    # A decodes; B's 100-token prompt arrives and is prefilled in chunks of what A leaves of 32
    requests = [(0.0, 4, 50), (0.055, 100, 2)]
    run = Run(requests, budget=32, max_num_seqs=8).until()
    assert run.first[0] == pytest.approx(0.010)
    # A never waits: one token every step from its first to its last
    assert run.finish[0] == pytest.approx(run.first[0] + 49 * STEP_MS / 1000)
    # B joins at the boundary after it arrives (0.060) and needs ceil(100 / 31) = 4 steps
    assert run.first[1] == pytest.approx(0.060 + 4 * STEP_MS / 1000)
    assert [32, 32, 32, 8] == run.times.tokens[2:6]  # (1 decode + 31 prompt) x 3, then 1 + 7
    # V0 prefills B whole in a step of its own: A's decodes wait that step
    v0 = Run(requests, mode="v0-prefill-first", budget=2048).until()
    assert v0.finish[0] == pytest.approx(v0.first[0] + 50 * STEP_MS / 1000)
    assert v0.first[1] == pytest.approx(0.060 + STEP_MS / 1000)


def test_steps_with_output_are_counted_as_vllms_iteration_tokens_histogram():
    # a lone 100-token prompt in chunks of 32: three steps emit nothing (not counted, as vLLM
    # observes iteration_tokens_total only for a step with outputs), the fourth its first token;
    # then four decode steps (one span), a token each: 5 of the 8 steps
    run = Run([(0.0, 100, 5)], budget=32, max_num_seqs=8)
    run.server.output_steps = counted = Steps()
    run.until()
    assert run.times.tokens[:4] == [32, 32, 32, 4] and run.finish[0] == pytest.approx(8 * STEP_MS / 1000)
    assert counted.count == 5
    # a second request prefilled in the fourth step decodes 19 steps more: 20 of 23 steps
    both = Run([(0.0, 100, 5), (0.0, 4, 20)], budget=32, max_num_seqs=8)
    both.server.output_steps = counted = Steps()
    both.until()
    assert both.finish[1] == pytest.approx(23 * STEP_MS / 1000) and counted.count == 20


def test_no_more_running_than_max_num_seqs():
    run = Run([(0.0, 10, 20)] * 10, max_num_seqs=3).until()
    assert max(run.running_seen) == 3
    # the rest start as the first ones finish, in order
    assert sorted(run.first) == run.first and not np.isnan(run.finish).any()


def test_kv_blocks_are_allocated_as_tokens_are_generated():
    total = 100
    seen = {}

    def look(now, server):
        seen[round(now, 6)] = server.free

    run = Run([(0.0, 15, 40), (0.0555, 4, 5)], kv_tokens=total * BLOCK_SIZE).until(after_wake=look)
    assert seen[0.010] == total - 1  # A's prompt: 15 tokens, one block; the span's blocks come as it runs
    # B cuts A's decode span after its fifth step (0.060): A has 20 computed tokens (2 blocks),
    # and B's 4-token prompt takes one more block in the step starting then
    assert seen[0.060] == total - blocks(20) - 1
    assert run.server.free == total and run.server.idle  # all returned


def test_preemption_evicts_the_newest_and_recomputes_it():
    # room for 4 blocks: A and B start with one each and both need a block every 16 tokens.
    # A's prompt is one step (0-10 ms); B's rides with A's first decode (10-20 ms)
    run = Run([(0.0, 16, 40), (0.0, 16, 30)], kv_tokens=4 * BLOCK_SIZE)
    run.until()
    assert run.server.preemptions == 1
    # A (the older) decodes through without a pause: first token after one step, then 39 steps
    assert run.first[0] == pytest.approx(0.010) and run.finish[0] == pytest.approx(0.400)
    # at 170 ms A (context 33) needs a third block and none is free: B, the newest, is evicted
    # (16 tokens generated, 2 blocks), waits for blocks until A ends, is recomputed (prompt and
    # output so far, 32 tokens) in one step and generates its last 13 tokens
    assert run.first[1] == pytest.approx(0.020)
    assert run.finish[1] == pytest.approx(0.400 + 14 * STEP_MS / 1000)
    assert run.server.free == 4 and run.server.idle


def test_a_request_never_fitting_in_free_blocks_waits_at_the_head():
    # V1 admits only whole prompts that fit in free blocks; the queue waits behind its head
    run = Run([(0.0, 40, 40), (0.001, 40, 2), (0.002, 2, 2)], kv_tokens=5 * BLOCK_SIZE, budget=64).until()
    assert run.first[1] > run.finish[0] - 0.0001 and run.first[2] >= run.first[1]


@pytest.mark.parametrize(("mode", "steps"), [("v1-chunked", 1), ("v0-prefill-first", 1), ("v0-prefill-first", 10)])
@pytest.mark.parametrize("seed", [0, 1])
def test_under_kv_pressure_blocks_are_conserved_and_every_request_finishes(mode, steps, seed):
    rng = np.random.default_rng(seed)
    n, total = 300, 120
    sizes = zip(np.sort(rng.uniform(0, 3, n)), rng.integers(1, 400, n), rng.integers(1, 200, n), strict=True)
    requests = [(float(t), int(i), int(o)) for t, i, o in sizes]
    run = Run(requests, mode=mode, budget=256, max_num_seqs=32, kv_tokens=total * BLOCK_SIZE, steps=steps)

    def check(now, server):
        assert 0 <= server.free <= total and len(server.running) <= 32

    run.until(after_wake=check)
    assert run.server.preemptions > 0  # the cache was short
    finish, first = np.array(run.finish), np.array(run.first)
    assert not np.isnan(finish).any() and np.all(finish >= first) and np.all(first >= np.array(run.arrival))
    assert run.server.free == total and run.server.idle


def test_multi_step_streams_and_schedules_only_between_groups():
    # V0 with 4 scheduler steps: A's prefill (0-10 ms) gives its first token, then a group of
    # 4 decodes (10-50 ms). B arrives mid-group and is prefilled at the group's end (50-60 ms);
    # the next group (60-100 ms) finishes both: A needed 1 of its steps, B 1, but their last
    # tokens stream, and their KV is freed, when the group ends.
    run = Run([(0.0, 10, 6), (0.015, 10, 2)], mode="v0-prefill-first", steps=4).until()
    assert run.first == pytest.approx([0.010, 0.060])
    assert run.finish == pytest.approx([0.100, 0.100])
    assert run.server.free == run.server.total_blocks and run.server.idle


def test_the_engine_sees_a_burst_once_the_api_server_has_taken_it_in():
    # 5 ms of intake per request on one thread: the three reach the engine together at 15 ms
    run = Run([(0.0, 10, 2), (0.001, 10, 2), (0.002, 10, 2)], overheads=Overheads(frontend_ms=5.0)).until()
    assert run.first == pytest.approx([0.025] * 3)


def test_multi_step_is_v0_only():
    with pytest.raises(ValueError, match="num_scheduler_steps"):
        EngineSettings("v1-chunked", num_scheduler_steps=8)


def test_stall_mode_is_the_earlier_model():
    # A prefills alone (5 + 1 ms) and decodes; B's prefill (5.5 ms) stalls A's second step part-way
    run = Run([(0.0, 100, 3), (0.015, 50, 2)], stall=True).until()
    assert run.first == pytest.approx([0.006, 0.0205])
    assert run.finish == pytest.approx([0.0315, 0.0305])


@pytest.fixture(scope="module")
def published():
    return load_published(PUBLISHED)


# |relative error| ceilings per burst size, in STATISTICS order: today's errors plus 3 points.
# Where they exceed 10% (README: the API server's intake of a burst, whose timing the replay
# reduces to one cost per request) the goal is not met.
CEILINGS = {
    10: [0.04, 0.07, 0.08, 0.06, 0.04, 0.07, 0.05],
    40: [0.06, 0.11, 0.14, 0.05, 0.07, 0.08, 0.12],
    80: [0.07, 0.10, 0.04, 0.05, 0.09, 0.05, 0.24],
    160: [0.10, 0.15, 0.16, 0.13, 0.06, 0.09, 0.10],
    320: [0.07, 0.08, 0.06, 0.05, 0.04, 0.05, 0.06],
    640: [0.04, 0.14, 0.15, 0.04, 0.10, 0.09, 0.15],
    1280: [0.04, 0.07, 0.08, 0.04, 0.05, 0.07, 0.12],
}


def test_published_vllm_points_within_their_ceilings(published):
    errors = relative_errors(published, replay_all(published, FITTED_OVERHEADS))
    for n, ceiling in CEILINGS.items():
        for name, error, limit in zip(STATISTICS, errors[n], ceiling, strict=True):
            assert abs(error) <= limit, f"N={n} {name}: {error:+.1%} (ceiling {limit:.0%})"


def test_fitted_overheads_are_the_least_squares_fit(published):
    def cost(overheads):
        errors = relative_errors(published, replay_all(published, overheads))
        residuals = np.concatenate(list(errors.values()))
        return residuals @ residuals

    stored = cost(FITTED_OVERHEADS)
    refit = fit_overheads(published, start=FITTED_OVERHEADS, iterations=3)
    assert cost(refit) >= stored - 0.02  # the stored values are (to rounding) the fit's optimum
    assert stored < 0.5 * cost(Overheads())  # and the overheads matter


def test_stored_runs_are_the_published_runs(published):
    # each run's TTFTs give back its published TTFT statistics, its lengths the prompt prefix
    for n, run in published.runs.items():
        ttft = run.ttft_ms
        stats = [ttft.mean(), np.median(ttft), np.percentile(ttft, 99)]
        assert stats == pytest.approx(published.points[n][1:4], rel=2e-3), n
        assert sorted(run.engine_order().tolist()) == list(range(n))
