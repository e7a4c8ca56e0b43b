"""The latency model's capacity searches and learning batched across ISVCs (policy/latency.py
capacities, policy/sizing.py per_replica_capacities and learn_windows) decide exactly as one ISVC
at a time."""

from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from autoscaler.optimizer.domain import ServiceTarget
from autoscaler.policy import sizing
from autoscaler.policy.latency import RATE_POINTS, Shape, capacities, capacity, predict_rates, saturating_rate
from autoscaler.policy.observation import Observation
from autoscaler.simulator.planning import world_catalog
from autoscaler.simulator.scenarios import build_scenario

GOAL = 0.95


@pytest.fixture(scope="module")
def catalog():
    return world_catalog(build_scenario("mixed", 1, 3600.0).world)


def _pairs(catalog, rng: random.Random, count: int):
    """Random replicas of the catalog's profiles (batch and KV limits, work scales), shapes and SLOs."""
    profiles = sorted(catalog.profiles)
    pairs, slos = [], []
    while len(pairs) < count:
        model, gpu = rng.choice(profiles)
        replica = sizing.replica(catalog, sizing.Learned(), model, gpu, rng.choice([0, 8, 64, 256]), rng.uniform(0.5, 2.5))
        shape = Shape(rng.uniform(0.0, 6000.0), rng.choice([1.0, rng.uniform(1.0, 1500.0)]))
        pairs.append((replica, shape))
        slos.append((rng.choice([150.0, 600.0, 3000.0, float("inf")]), rng.choice([12.0, 30.0, 80.0, float("inf")])))
    return pairs, np.array([t for t, _ in slos]), np.array([i for _, i in slos])


def _scanned(replica, shape, ttft_ms, itl_ms):
    """The search as every rate of both passes predicted (what a bisection must find where
    attainment falls with the rate): the reference the batched search is held to."""
    high = saturating_rate(replica, shape)
    if predict_rates(replica, shape, np.array([high * 1e-4]), ttft_ms, itl_ms).attainment[0] < GOAL:
        return 0.0
    low, low_share, high_share = 0.0, 1.0, 0.0
    for _ in range(2):
        rates = low + (high - low) * np.arange(1, RATE_POINTS + 1) / (RATE_POINTS + 1)
        shares = predict_rates(replica, shape, rates, ttft_ms, itl_ms).attainment
        met = np.flatnonzero(shares >= GOAL)
        last = met[-1] if met.size else -1
        assert np.all(shares[: last + 1] >= GOAL), "attainment does not fall with the rate"
        low_share, high_share = (shares[last] if last >= 0 else 1.0), (shares[last + 1] if last + 1 < RATE_POINTS else 0.0)
        low, high = (rates[last] if last >= 0 else low), (rates[last + 1] if last + 1 < RATE_POINTS else high)
    return low + (high - low) * (low_share - GOAL) / max(low_share - high_share, 1e-12)


def test_batched_capacity_searches_equal_one_at_a_time_and_every_rate_scanned(catalog):
    pairs, ttft, itl = _pairs(catalog, random.Random(3), 40)
    batched = capacities(pairs, ttft, itl, GOAL)
    alone = [capacity(r, s, t, i, GOAL) for (r, s), t, i in zip(pairs, ttft, itl, strict=True)]
    assert batched == pytest.approx(alone, rel=1e-12, abs=1e-12)
    assert alone == pytest.approx([_scanned(r, s, t, i) for (r, s), t, i in zip(pairs, ttft, itl, strict=True)], rel=1e-12)
    assert 0 < np.count_nonzero(batched) < len(pairs)  # some pairs meet no goal (no capacity), most do
    rng = random.Random(4)
    for per_replica in batched:
        rate = rng.uniform(0.0, 30.0)
        assert sizing.replicas_for(rate, per_replica) == sizing.replicas_for(rate, float(per_replica))
    assert capacities([], np.array([]), np.array([]), GOAL).size == 0


def _learned(catalog, rng: random.Random, keys: list[str]) -> sizing.Learned:
    learned = sizing.Learned()
    for model, gpu in catalog.profiles:
        learned.work[(model, gpu)] = sizing.Estimate(rng.uniform(0.6, 1.8), 3)
    for key in keys:
        learned.bias[key] = sizing.Estimate(rng.uniform(0.7, 1.3), 3)
    return learned


def test_planner_sizing_in_one_batch_equals_one_isvc_at_a_time(catalog, monkeypatch):
    rng = random.Random(5)
    profiles = sorted(catalog.profiles)
    asked = []
    for i in range(30):
        model, gpu = rng.choice(profiles)
        target = ServiceTarget(itl_ms=rng.choice([30.0, 80.0]), ttft_ms=rng.choice([1000.0, 4000.0]), tps=0.0)
        shape = Shape(rng.uniform(100.0, 3000.0), rng.uniform(20.0, 600.0))
        asked.append(sizing.Sizing(sizing.Deployment(f"isvc-{i}", model, gpu, rng.choice([0, 32, 128])), shape, target))
    learned = _learned(catalog, rng, [a.runs.key for a in asked])
    monkeypatch.setattr(sizing, "_CAPACITIES", sizing._CapacityCache(1000))
    batched = sizing.per_replica_capacities(learned, catalog, asked, GOAL)
    monkeypatch.setattr(sizing, "_CAPACITIES", sizing._CapacityCache(1000))  # nothing carried over
    alone = [sizing.per_replica_capacity(learned, catalog, a.runs, a.shape, a.target, GOAL) for a in asked]
    assert batched == pytest.approx(alone, rel=1e-12)
    assert all(c is not None for c in batched) and sum(c > 0 for c in batched) > len(batched) / 2
    cache = sizing._CapacityCache(3)  # fewer points than asked: each answer still its own
    points = [sizing._GridPoint(*pair, 600.0, 30.0, GOAL) for pair in _pairs(catalog, rng, 5)[0]]
    assert cache.get(points) == pytest.approx([capacity(p.replica, p.shape, 600.0, 30.0, GOAL) for p in points], rel=1e-12)
    assert len(cache.known) == 3


def _observation(rng: random.Random) -> Observation:
    rate = rng.uniform(1.0, 12.0)
    count, output = rate * 60.0, rng.uniform(50.0, 400.0)
    ttft_met, itl_met = rng.uniform(0.85, 1.0), rng.uniform(0.8, 1.0)
    ttft = ((0.5, count * ttft_met), (float("inf"), count))
    itl = ((0.025, count * itl_met * 0.9), (0.05, count * itl_met), (float("inf"), count))  # per request
    return Observation(rate, rate, rng.uniform(200.0, 3000.0), output, 3.0, 0.0, 150.0, rng.uniform(12.0, 40.0), ttft, itl)


def test_learning_every_window_in_one_batch_equals_one_window_at_a_time(catalog):
    rng = random.Random(6)
    profiles = sorted(catalog.profiles)
    windows = []
    # several ISVCs per (model, GPU): each window sees the work scale the ones before moved; 60 so
    # that more than 10 teach a bias (windows both model and measurement see overloaded do not)
    for i in range(60):
        model, gpu = profiles[i % 4]
        runs = sizing.Deployment(f"isvc-{i}", model, gpu, rng.choice([0, 64]))
        windows.append(
            sizing.Window(runs, rng.randint(1, 4), _observation(rng), ServiceTarget(itl_ms=30.0, ttft_ms=1000.0, tps=0.0))
        )
    learned = _learned(catalog, rng, [w.runs.key for w in windows[::2]])  # half start from no bias
    batched, alone = learned, copy.deepcopy(learned)
    before = sum(e.windows for e in learned.bias.values())
    sizing.learn_windows(batched, catalog, windows, GOAL)
    for w in windows:
        sizing.learn(alone, catalog, w.runs, w.replicas, w.obs, w.target, GOAL)
    assert batched.work.keys() == alone.work.keys() and batched.bias.keys() == alone.bias.keys()
    for mine, theirs in [(batched.work[k], alone.work[k]) for k in alone.work] + [
        (batched.bias[k], alone.bias[k]) for k in alone.bias
    ]:
        assert (mine.value, mine.windows) == (pytest.approx(theirs.value, rel=1e-12), theirs.windows)
    assert sum(e.windows for e in batched.bias.values()) - before > 10  # windows taught biases: the test compares learning
    with pytest.raises(ValueError):
        sizing.learn_windows(batched, catalog, [windows[0], windows[0]], GOAL)
