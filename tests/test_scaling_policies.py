"""The policies' decision maths and the arrival rate from vLLM's counters, in isolation."""

from collections import deque

import pytest

from autoscaler.policy.observation import arrival_rate
from autoscaler.simulator.engine import IsvcView
from autoscaler.simulator.policies.hpa import HorizontalPodAutoscaler, HpaBehavior
from autoscaler.simulator.policies.kpa import KnativePodAutoscaler, window_average


def view(in_flight=0, samples=(), ready=2, replicas=2):
    return IsvcView(
        name="s",
        accelerator="G",
        max_batch=64,
        replicas=replicas,
        ready=ready,
        in_flight=in_flight,
        samples=deque(samples),
    )


def test_the_arrival_rate_counts_queue_growth_not_completions_alone():
    # 150 finished and 6 dropped while the requests in the system grew from 10 to 70
    assert arrival_rate(150 + 6, 70 - 10, 30.0) == pytest.approx((150 + 6 + 60) / 30.0)
    assert arrival_rate(0, 0, 30.0) == 0
    assert arrival_rate(5, -40, 30.0) == 0  # a counter reset within the window is no negative rate
    with pytest.raises(ValueError):
        arrival_rate(1, 0, 0.0)


def test_kpa_follows_the_stable_window_and_panics_on_a_surge():
    kpa = KnativePodAutoscaler({0: 10.0})  # 7 requests per pod at 70% utilisation
    steady = [14.0] * 60
    assert kpa.decide(0.0, [view(samples=steady)])[0].replicas == 2
    surge = [14.0] * 54 + [70.0] * 6  # panic window asks for 10 pods, 5x the two ready
    assert kpa.decide(2.0, [view(samples=surge)])[0].replicas == 10
    calm = [14.0] * 60  # still panicking for a stable window: no scale-down
    assert kpa.decide(4.0, [view(samples=calm, ready=10, replicas=10)])[0].replicas == 10
    assert kpa.decide(70.0, [view(samples=calm, ready=10, replicas=10)])[0].replicas == 5  # at most halve per tick


def test_kpa_window_average_uses_what_it_has():
    assert window_average(deque([1, 2, 3]), 60) == 2
    assert window_average(deque([0] * 54 + [6] * 6), 6) == 6


def test_hpa_tolerance_scale_up_limit_and_scale_down_stabilisation():
    hpa = HorizontalPodAutoscaler({0: 10.0})
    assert hpa.decide(0.0, [view(in_flight=21, ready=2)])[0].replicas == 2  # 1.05: within 10%
    assert hpa.decide(15.0, [view(in_flight=200, ready=2)])[0].replicas == 6  # wants 20, +4 pods at most
    # load falls: the recommendation of the last 300 s (20) holds the count at the current 6
    assert hpa.decide(30.0, [view(in_flight=10, ready=6, replicas=6)])[0].replicas == 6
    assert hpa.decide(400.0, [view(in_flight=10, ready=6, replicas=6)])[0].replicas == 1


def test_a_new_hpa_holds_the_count_it_found_for_a_stabilisation_window():
    """The HPA controller records the target's replicas at its first sync as a recommendation
    (recordInitialRecommendation): a fleet it finds is not released before the window ends,
    whatever the first recommendation (a new revision's initial scale, the opening fleet)."""
    hpa = HorizontalPodAutoscaler({0: 10.0})
    assert hpa.decide(15.0, [view(in_flight=1, ready=5, replicas=5)])[0].replicas == 5
    assert hpa.decide(300.0, [view(in_flight=1, ready=5, replicas=5)])[0].replicas == 5
    assert hpa.decide(330.0, [view(in_flight=1, ready=5, replicas=5)])[0].replicas == 1


def test_an_hpa_whose_scale_down_window_changes_applies_the_window_in_force_to_its_recommendations():
    """As the HPA controller (horizontal.go, stabilizeRecommendationWithBehaviors): the window in
    force at a sync picks the recommendations that hold the count; each sync's recommendation
    overwrites one older than that window, so a window lengthened again finds those of the
    longer window not yet overwritten."""
    hpa = HpaBehavior()
    assert hpa.replicas(0.0, 16, 5, scale_down_s=300) == 16  # 16 found at the first sync
    assert hpa.replicas(30.0, 16, 5, scale_down_s=60) == 16  # 16 recorded at 0 still within 60 s
    assert hpa.replicas(75.0, 16, 5, scale_down_s=60) == 5  # now older than the window in force
    assert hpa.replicas(90.0, 5, 3, scale_down_s=300) == 5  # lengthened: the first sync's 16, not overwritten, holds
    assert hpa.replicas(90.0, 5, 8) == 8  # scale-up is not stabilised (window 0)
