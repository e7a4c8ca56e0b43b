"""Candidate sizing and the allocation policies on small hand-made problems."""

import pytest

from autoscaler.optimizer.allocation import transition_value
from autoscaler.optimizer.domain import Allocation, CurrentAllocation, SaturationPolicy
from autoscaler.optimizer.sizing import size_candidates
from autoscaler.optimizer.solver import solve

from .builders import server, service_classes, system


def cheapest(problem, name):
    return min(size_candidates(problem)[name], key=lambda a: a.cost)


def test_unlimited_takes_each_servers_cheapest_candidate():
    problem = system([server("s1", 600), server("s2", 3000, cls="free")], unlimited=True)
    solution = solve(problem)
    for name in ("s1", "s2"):
        assert solution.allocations[name].cost == cheapest(problem, name).cost


def test_replicas_cover_the_load_at_the_sized_rate():
    problem = system([server("s", 6000)], unlimited=True)
    for alloc in size_candidates(problem)["s"]:
        assert alloc.num_replicas == pytest.approx(6000 / 60 / alloc.max_rate_per_replica, abs=1.0)
        assert alloc.num_replicas >= 6000 / 60 / alloc.max_rate_per_replica


def test_min_replicas_and_zero_load():
    problem = system([server("busy", 60, min_replicas=5), server("warm", 0, min_replicas=2), server("off", 0)])
    solution = solve(problem)
    assert solution.allocations["busy"].num_replicas == 5
    assert solution.allocations["warm"].num_replicas == 2
    assert "off" not in solution.allocations and solution.idle == ("off",)
    assert solution.unallocated == ()


def test_unreachable_slo_leaves_server_unallocated():
    classes = service_classes(itl=1.0)  # below every accelerator's bare decode step
    solution = solve(system([server("s", 600)], classes=classes))
    assert solution.allocations == {} and solution.unallocated == ("s",)


def test_tps_target_sizes_by_tokens_per_second():
    problem = system([server("batch", 1, out=500)], classes=service_classes(itl=0, ttft=0, tps=5000), unlimited=True)
    alloc = solve(problem).allocations["batch"]
    assert alloc.num_replicas * alloc.max_rate_per_replica >= 5000 / 500


def test_higher_priority_gets_the_scarce_cheap_type():
    # both servers are cheapest on A, but A has room for only one of them
    problem = system([server("free", 1200, cls="free"), server("gold", 1200)], capacity={"A": 6, "B": 10})
    assert cheapest(problem, "gold").accelerator == cheapest(problem, "free").accelerator == "A"
    assert cheapest(problem, "gold").num_replicas == 6
    solution = solve(problem)
    assert solution.allocations["gold"].accelerator == "A"
    assert solution.allocations["free"].accelerator in ("B", "2xB")
    assert not any(a.best_effort for a in solution.allocations.values())


def test_capacity_is_counted_in_cards_of_the_type():
    problem = system([server("s", 1200)], capacity={"A": 0, "B": 100})
    alloc = solve(problem).allocations["s"]
    cards = alloc.num_replicas * (2 if alloc.accelerator == "2xB" else 1)
    assert cards <= 100


def _starved(policy, delayed=False):
    # each server alone needs more A cards than exist; no B at all
    problem = system(
        [server("g1", 30000), server("g2", 30000), server("f1", 30000, cls="free")],
        capacity={"A": 9, "B": 0},
        policy=policy,
        delayed=delayed,
    )
    return problem, solve(problem)


def test_saturation_policy_none_allocates_nothing_beyond_slos():
    _, solution = _starved(SaturationPolicy.NONE)
    assert solution.allocations == {} and set(solution.unallocated) == {"g1", "g2", "f1"}


def test_round_robin_shares_one_replica_at_a_time_across_priorities():
    _, solution = _starved(SaturationPolicy.ROUND_ROBIN)
    # RoundRobin still runs per priority group unless best effort is delayed: gold first
    counts = {k: a.num_replicas for k, a in solution.allocations.items()}
    assert counts == {"g1": 5, "g2": 4} or counts == {"g1": 4, "g2": 5}
    assert all(a.best_effort for a in solution.allocations.values())


def test_delayed_round_robin_shares_across_all_servers():
    _, solution = _starved(SaturationPolicy.ROUND_ROBIN, delayed=True)
    assert sorted(a.num_replicas for a in solution.allocations.values()) == [3, 3, 3]


def test_priority_exhaustive_fills_one_server_first():
    problem, solution = _starved(SaturationPolicy.PRIORITY_EXHAUSTIVE)
    assert [a.num_replicas for a in solution.allocations.values()] == [9]
    only = next(iter(solution.allocations.values()))
    full = next(a for a in size_candidates(problem)[only.server] if a.accelerator == "A")
    assert only.cost == pytest.approx(full.cost * 9 / full.num_replicas)


def test_priority_round_robin_serves_gold_before_free():
    _, solution = _starved(SaturationPolicy.PRIORITY_ROUND_ROBIN, delayed=True)
    assert set(solution.allocations) == {"g1", "g2"}
    assert sum(a.num_replicas for a in solution.allocations.values()) == 9


def _alloc(acc, replicas, cost):
    return Allocation("s", acc, replicas, 8, cost, cost, 1.0, 1.0, 1.0)


def test_transition_value():
    assert transition_value(_alloc("A", 3, 30), None) == pytest.approx(33)  # Inferno: from an empty allocation
    assert transition_value(_alloc("A", 3, 30), CurrentAllocation("A", 3, cost=30)) == 0
    assert transition_value(_alloc("A", 4, 40), CurrentAllocation("A", 3, cost=30)) == 10
    assert transition_value(_alloc("B", 1, 40), CurrentAllocation("A", 3, cost=30)) == pytest.approx(0.1 * 70 + 10)


def test_current_allocation_is_kept_when_moving_costs_more_than_it_saves():
    fresh = solve(system([server("s", 600)], unlimited=True)).allocations["s"]
    other = next(a for a in size_candidates(system([server("s", 600)]))["s"] if a.accelerator != fresh.accelerator)
    current = CurrentAllocation(other.accelerator, other.num_replicas, cost=other.cost)
    if other.cost - fresh.cost < 0.1 * (other.cost + fresh.cost):
        stay = solve(system([server("s", 600, current=current)], unlimited=True)).allocations["s"]
        assert stay.accelerator == other.accelerator
    kept = solve(system([server("s", 600, current=current, keep_accelerator=True)])).allocations["s"]
    assert kept.accelerator == other.accelerator


def test_kv_cache_bounds_the_batch_where_known():
    from autoscaler.optimizer.domain import IterationParams, ModelProfile

    inferno = ModelProfile("m", "A", 1, max_batch_size=64, at_tokens=512, params=IterationParams(1, 0.1, 0.001))
    assert inferno.batch_limit(128, 1024) == 32  # Inferno: 64 * 512 // 1024 output tokens
    measured = ModelProfile("m", "A", 1, 256, 0, IterationParams(1, 0.1, 0.001), kv_cache_tokens=50_000)
    assert measured.batch_limit(1000, 250) == 40  # memory: 50,000 // 1,250 tokens per request
    assert measured.batch_limit(10, 10) == 256  # and never beyond max-num-seqs
    assert measured.batch_limit(100_000, 10) == 1
