"""Frontiers of tuned baselines and where a policy stands against them."""

import pytest

from autoscaler.simulator.pareto import Point, attainment_at, frontier, gpu_hours_for

RUNS = [Point(10.0, 0.90), Point(12.0, 0.96), Point(11.0, 0.85), Point(14.0, 0.99), Point(16.0, 0.98)]


def test_frontier_keeps_what_nothing_beats_on_both():
    assert frontier(RUNS) == [Point(10.0, 0.90), Point(12.0, 0.96), Point(14.0, 0.99)]
    assert frontier([]) == []


@pytest.mark.parametrize(
    "gpu_hours, expected",
    [(9.0, None), (10.0, 0.90), (11.0, 0.93), (13.0, 0.975), (20.0, 0.99)],
)
def test_attainment_at_given_gpu_hours(gpu_hours, expected):
    assert attainment_at(frontier(RUNS), gpu_hours) == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    "attainment, expected",
    [(0.5, 10.0), (0.93, 11.0), (0.99, 14.0), (0.995, None)],
)
def test_gpu_hours_for_given_attainment(attainment, expected):
    assert gpu_hours_for(frontier(RUNS), attainment) == (None if expected is None else pytest.approx(expected))
