"""The workload suite: each shape as the issue describes it, and the traces in their own shape."""

import numpy as np
import pytest

from autoscaler.simulator.scenarios import ISVCS
from autoscaler.simulator.traffic import builtin_trace
from autoscaler.simulator.workloads import (
    LOW,
    PAST_S,
    SUITE,
    TRACE_COMPRESSION,
    TRACE_MEAN_SHARE,
    WORKLOADS,
    _trace_window,
    build_workload,
    workload_shape,
)

HOUR = np.arange(3600, dtype=float)


def shape(kind, seed=1):
    return workload_shape(kind, HOUR, 3600.0, np.random.default_rng(seed))


def test_flash_crowd_quadruples_within_a_minute_for_ten_minutes():
    s = shape("flash-crowd")
    assert s.min() == LOW and s.max() == 1.0 and s.max() / s.min() == 4.0
    rising = np.flatnonzero((s > LOW) & (s < 1.0))
    at_peak = np.flatnonzero(s == 1.0)
    assert at_peak.size == 601  # ten minutes at the peak
    assert rising[rising < at_peak[0]].size <= 60  # reached within 60 s


def test_slow_ramp_rises_tenfold_over_the_run():
    s = shape("slow-ramp")  # 0.2x -> 2x of a base rate: 0.1 -> 1 of the peak
    assert np.all(np.diff(s) > 0)
    assert s[0] == pytest.approx(0.1) and s[-1] == pytest.approx(1.0, abs=0.001)


@pytest.mark.parametrize("kind, half_period", [("square-5m", 300), ("square-2.5m", 150)])
def test_square_waves_alternate(kind, half_period):
    s = shape(kind)
    edges = np.flatnonzero(np.diff(s)) + 1
    assert set(np.diff(edges)) == {half_period} and set(s) == {LOW, 1.0}


def test_mmpp_has_two_levels_and_sojourns_of_minutes():
    s = workload_shape("mmpp", np.arange(200_000, dtype=float), 200_000.0, np.random.default_rng(3))
    assert set(s) == {LOW, 1.0}
    sojourns = np.diff(np.flatnonzero(np.diff(s)))
    assert sojourns.mean() == pytest.approx(180, rel=0.1)
    assert s.max() / s.min() == 4.0  # levels 0.5x and 2x


@pytest.mark.parametrize("name, source", [("azure-code", "code"), ("azure-conv", "conv")])
def test_traces_replay_one_window_in_their_own_shape(name, source):
    trace = builtin_trace(source)
    scenario = build_workload(name, seed=1)
    assert scenario.duration_s == pytest.approx(trace.time[-1] / TRACE_COMPRESSION, rel=0.01)
    for index in range(len(ISVCS)):
        mine = scenario.requests.time[scenario.requests.isvc == index]
        assert np.unique(mine).size == mine.size  # a thinned replay, not superposed copies
    other = build_workload(name, seed=2)
    assert not np.array_equal(other.requests.time, scenario.requests.time)


@pytest.mark.parametrize("source", ["code", "conv"])
def test_the_whole_trace_replays_as_a_loop_from_where_the_seed_starts_it(source):
    trace = builtin_trace(source)
    count = len(trace.time)
    looped_gaps = np.append(np.diff(trace.time), trace.time[-1] / (count - 1))
    firsts = set()
    for seed in range(1, 6):
        window, past, duration = _trace_window(trace, 3600.0, np.random.default_rng(seed))
        assert duration == pytest.approx(trace.time[-1] / TRACE_COMPRESSION, rel=0.01)
        # every request once, in the trace's order from the one the seed starts at, its gaps kept
        first = next(
            k
            for k in np.flatnonzero(trace.in_tokens == window.in_tokens[0])
            if np.array_equal(np.roll(trace.in_tokens, -k), window.in_tokens)
            and np.array_equal(np.roll(trace.out_tokens, -k), window.out_tokens)
        )
        assert np.allclose(np.diff(window.time), np.roll(looped_gaps, -first)[:-1])
        assert 0.0 <= window.time[0] < looped_gaps.max() and window.time[-1] < duration * TRACE_COMPRESSION
        firsts.add(int(first))
        # the window's past is the loop's end, up to the window's first request
        before = past.time[-1] - past.time[0]
        assert before == pytest.approx(PAST_S * TRACE_COMPRESSION, abs=looped_gaps.max())
        assert np.array_equal(past.in_tokens, np.roll(trace.in_tokens, -first)[-len(past.time) :])
        assert window.time[0] - past.time[-1] == pytest.approx(np.roll(looped_gaps, -first)[-1])
    assert len(firsts) == 5  # no two seeds open on the same request


def test_a_trace_window_carries_its_past_and_the_window_is_the_seeds_as_without_it():
    """The ISVCs of a trace's window were running before it: the scenario carries the loop's
    PAST_S before it, thinned to each ISVC's share as the window is, by a random stream of its
    own, so that the window's requests are those the seed drew before there was a past."""
    scenario = build_workload("azure-conv", seed=3)
    past = scenario.past
    assert scenario.past_s == PAST_S and -PAST_S <= past.time.min() and past.time.max() < 0.0
    window_rates = np.bincount(scenario.requests.isvc) / scenario.duration_s
    assert np.bincount(past.isvc) / PAST_S == pytest.approx(window_rates, rel=0.25)
    assert build_workload("mmpp", seed=3).past is None  # a shape opens with its run
    rng = np.random.default_rng(3)  # the window's draws, as build_workload makes them
    window, _, duration = _trace_window(builtin_trace("conv"), 3600.0, rng)
    compressed_rate = len(window.time) / duration
    chat = window.time / TRACE_COMPRESSION
    kept = rng.random(len(chat)) < min(1.0, TRACE_MEAN_SHARE * ISVCS[0][-1] / compressed_rate)
    assert np.array_equal(scenario.requests.time[scenario.requests.isvc == 0], chat[kept])


def test_a_shorter_run_replays_a_window_the_seed_picks():
    first, second = build_workload("azure-conv", seed=1, duration_s=300.0), build_workload("azure-conv", seed=2, duration_s=300.0)
    assert first.duration_s == second.duration_s == 300.0
    assert first.requests.in_tokens[:50].tolist() != second.requests.in_tokens[:50].tolist()


def test_every_workload_builds_within_the_base_rates():
    assert set(SUITE) <= set(WORKLOADS)
    for name in WORKLOADS:
        scenario = build_workload(name, seed=1, duration_s=600.0)
        assert scenario.name == name and len(scenario.requests) > 0
        assert np.all(np.diff(scenario.requests.time) >= 0) and scenario.requests.time[-1] < scenario.duration_s
