"""The baselines' load test: a replica's capacity found to 1-2%, repeatably."""

import functools

import pytest

from autoscaler.simulator import load_test
from autoscaler.simulator.scenarios import build_scenario

GRANITE = 3  # on an A100, about 1.3 req/s per replica: the fewest requests per run


@pytest.fixture(scope="module")
def scenario():
    return build_scenario("mixed", seed=1, duration_s=600.0)


def test_capacity_is_repeatable_across_seeds_and_sits_on_the_goal(scenario):
    first = load_test.replica_capacity(scenario, GRANITE, seed=0)
    second = load_test.replica_capacity(scenario, GRANITE, seed=7)
    assert second.max_rate == pytest.approx(first.max_rate, rel=0.02)
    assert second.concurrency == pytest.approx(first.concurrency, rel=0.05)
    # on a grid 1% apart, with an independent stream: the goal is crossed next to the capacity
    stream = load_test._stream(scenario, GRANITE, load_test.MEASURED_REQUESTS, seed=99)
    measure = functools.partial(load_test._attainment, scenario, GRANITE, stream=stream)
    rates = [first.max_rate * (1 + k / 100) for k in (-3, 3)]
    assert measure(rates[0])[0] >= 0.95 > measure(rates[1])[0]
