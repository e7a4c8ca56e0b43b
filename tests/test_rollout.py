"""Roll-outs: a new revision only when it pays for its cold start or the SLOs need it, at most
one per dwell, never without GPUs free for it; GPUs of revisions in flight never offered again.
The controller's planning without a superseded revision's GPUs runs on the real kube-apiserver
(tests/e2e/test_planning_cycles.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from autoscaler.controller.catalog import available_capacity, node_gpu_types, placed_afresh
from autoscaler.controller.manifests import condition
from autoscaler.kserve import ISVC_LABEL, REVISION_LABEL
from autoscaler.optimizer.domain import Allocation
from autoscaler.policy.decisions import LastDecision
from autoscaler.policy.planner import PlannerSettings, PlannerState, plan
from autoscaler.policy.rollout import judge, offered_capacity
from autoscaler.simulator import engine
from autoscaler.simulator.policies import model_based
from autoscaler.simulator.runner import RunSettings, build_policy
from autoscaler.simulator.scenarios import default_world
from autoscaler.simulator.traffic import builtin_trace, poisson_arrivals, sized
from autoscaler.simulator.world import Scenario

from .cluster_objects import gpu_pod, node
from .test_controller_planning import CAPACITY, DATA, observed, plan_one, service


def alloc(accelerator: str, replicas: int, cost: float, best_effort: bool = False) -> Allocation:
    return Allocation("s", accelerator, replicas, 64, cost, cost, 20.0, 200.0, 1.0, best_effort)


def test_a_move_is_made_only_when_its_saving_over_the_horizon_exceeds_both_revisions_cold_start():
    stay, cheaper = alloc("A", 4, 400.0), alloc("B", 2, 300.0)
    # saves 100/h for 600 s = 16.7; costs (300 + 400)/h for 60 s = 11.7: worth it, not at 120 s (23.3)
    assert judge(cheaper, stay, 400.0, startup_s=60.0, horizon_s=600.0).roll_out
    slow = judge(cheaper, stay, 400.0, startup_s=120.0, horizon_s=600.0)
    assert not slow.roll_out and "not worth a new revision" in slow.reason
    # a move that costs more is never worth it, however long the horizon
    assert not judge(alloc("B", 5, 500.0), stay, 400.0, startup_s=1.0, horizon_s=1e9).roll_out


def test_a_move_the_slos_need_is_made_whatever_it_saves():
    dearer = alloc("B", 5, 900.0)
    assert judge(dearer, None, 400.0, 120.0, 600.0).roll_out  # staying cannot be placed at all
    assert judge(dearer, alloc("A", 3, 300.0, best_effort=True), 400.0, 120.0, 600.0).roll_out
    # both short of the SLOs: the saving rule decides
    assert not judge(alloc("B", 5, 900.0, best_effort=True), alloc("A", 3, 300.0, best_effort=True), 400.0, 120.0, 600.0).roll_out


def test_gpus_held_by_revisions_in_flight_are_not_offered():
    offered = offered_capacity({"H100": 16, "A100": 12}, [{"A100": 5}, {"H100": 2, "A100": 9}, {"L40S": 3}])
    assert offered == {"H100": 14, "A100": 0}


def test_the_controller_counts_a_superseded_revisions_pods_out_of_the_capacity():
    nodes = [node("h1", "NVIDIA-H100-80GB-HBM3", 8), node("h2", "NVIDIA-H100-80GB-HBM3", 8)]
    labels = lambda revision: {ISVC_LABEL: "chat", REVISION_LABEL: revision}  # noqa: E731
    pods = [
        gpu_pod("old-1", "h1", 2, "prod", labels("chat-predictor-00001")),  # serving until 00002 is Ready
        gpu_pod("new-1", "h2", 2, "prod", labels("chat-predictor-00002")),
        gpu_pod("new-2", None, 2, "prod", labels("chat-predictor-00002")),  # not bound yet: holds nothing
        gpu_pod("training", "h1", 1),
    ]
    types = node_gpu_types(nodes, DATA)
    latest = {("prod", "chat"): "chat-predictor-00002"}
    assert available_capacity(nodes, types, pods, lambda pod: placed_afresh(pod, latest), {}) == {"H100": 16 - 2 - 1}
    # before KServe reports a revision, or in Standard mode, every pod of the ISVC is placed anew
    assert available_capacity(nodes, types, pods, lambda pod: placed_afresh(pod, {("prod", "chat"): None}), {}) == {"H100": 15}
    # what no pod holds: where a new revision must start
    assert available_capacity(nodes, types, pods, lambda _: False, {}) == {"H100": 16 - 2 - 2 - 1}


LAST_L40S = LastDecision("L40S", 3, 16, 300.0, 30.0, 5.0, 96.0, decided_at=0.0, spec_changed_at=0.0)
LAST_H100 = replace(LAST_L40S, accelerator="H100", replicas=1, cost=75.0)


def test_the_planner_keeps_what_runs_when_a_move_does_not_pay_for_its_cold_start():
    # at 0.5 req/s the optimizer would move L40S x3 (96/h) to one A100 replica (40/h): 56/h over
    # the 600 s dwell saves 9.3, less than both revisions through a 10-minute start (136/h x 600 s)
    slow = PlannerSettings(startup_s=600.0)
    kept = only_plan(service(last=LAST_L40S, spec_changes="true"), 0.5, slow)
    assert not kept.roll_out and kept.decision.accelerator == "L40S" and "not worth a new revision" in kept.reason
    # a plan as decided: the ISVC's condition is True, the refused move a note in its message
    assert condition(kept)["status"] == "True" and condition(kept)["reason"] == "Decided"
    assert "not worth a new revision" in condition(kept)["message"]
    # with a near-instant start the same move pays
    fast = PlannerSettings(startup_s=1.0)
    moved = only_plan(service(last=LAST_L40S, spec_changes="true"), 0.5, fast)
    assert moved.roll_out and moved.decision.accelerator != "L40S"


def test_a_move_is_judged_at_the_count_the_top_of_the_rates_noise_asks():
    """One H100 (75/h) or one A100 (40/h, 0.998 req/s a replica). At 0.6 req/s one A100 serves
    the rate now, but the top of the rate's noise over the window asks two (80/h): the count the
    HPA's window would hold as the next cycles draw that noise, so the saving is a rounding of
    one draw and the move is not made. At 0.5 req/s one A100 serves the top too: it is made."""
    fast, svc = PlannerSettings(startup_s=1.0), service(last=LAST_H100, spec_changes="true")
    kept = only_plan(svc, 0.6, fast)
    assert not kept.roll_out and kept.decision.accelerator == "H100"
    assert "not worth a new revision: on 2 replicas against 1" in kept.reason
    moved = only_plan(svc, 0.5, fast)
    assert moved.roll_out and (moved.decision.accelerator, moved.decision.replicas) == ("A100", 1)


def test_no_move_for_a_saving_at_a_load_below_its_recent_peak():
    """A lull in bursty traffic: the move that pays at 0.5 req/s (above, with a near-instant
    start) is not made a cycle after 5 req/s, which may come back within the dwell; at a load
    that has stayed there it is."""
    fast, svc = PlannerSettings(startup_s=1.0), service(last=LAST_L40S, spec_changes="true")
    state = PlannerState()
    for now, rate in ((940.0, 5.0), (970.0, 5.0)):
        plan(DATA.catalog, CAPACITY, [svc], {("prod", "chat"): observed(rate)}, now, state, fast)
    lull = plan(DATA.catalog, CAPACITY, [svc], {("prod", "chat"): observed(0.5, previous=5.0)}, 1000.0, state, fast)[0]
    assert not lull.roll_out and lull.decision.accelerator == "L40S" and "below its recent peak" in lull.reason
    settled = PlannerState()
    for now in (940.0, 970.0):
        plan(DATA.catalog, CAPACITY, [svc], {("prod", "chat"): observed(0.5)}, now, settled, fast)
    moved = plan(DATA.catalog, CAPACITY, [svc], {("prod", "chat"): observed(0.5)}, 1000.0, settled, fast)[0]
    assert moved.roll_out and moved.decision.accelerator != "L40S"


def cycles(svc, rates: list[float], settings: PlannerSettings, start: float = 0.0) -> list:
    """One ISVC's plans over cycles 30 s apart from `start`, each window's rate given, the
    window before it the last one's."""
    state, previous, out = PlannerState(), rates[0], []
    for cycle, rate in enumerate(rates):
        obs = {("prod", "chat"): observed(rate, previous=previous)}
        out.append(plan(DATA.catalog, CAPACITY, [svc], obs, start + 30.0 * cycle, state, settings)[0])
        previous = rate
    return out


def test_no_move_for_a_saving_at_a_load_still_rising():
    """A load in transit: the move that pays at 0.5 req/s (above, with a near-instant start) is
    not made at a cycle where the rate has risen beyond noise since the last, its saving sized at
    a load the rise is passing through, nor at the next cycle within the window (60 s) whose mean
    still lags that rise, though it rose no further since; once the load has stayed there a
    window it is."""
    fast, svc = PlannerSettings(startup_s=1.0), service(last=LAST_L40S, spec_changes="true")
    rising = cycles(svc, [0.1, 0.1, 0.5], fast, start=940.0)[-1]
    assert not rising.roll_out and rising.decision.accelerator == "L40S" and "rising" in rising.reason
    after = cycles(svc, [0.1, 0.1, 0.5, 0.5], fast, start=940.0)[-1]  # 30 s after the rise
    assert not after.roll_out and "rising" in after.reason and "30 s ago" in after.reason
    assert cycles(svc, [0.1, 0.1, 0.5, 0.5, 0.5], fast, start=940.0)[-1].roll_out


def test_no_move_for_a_saving_while_replicas_are_held_for_a_load_that_may_come_back():
    """A spike to 5 req/s from 0.5 for one cycle at 300 s, over before replicas asked for it
    could serve: once the HPA's window has passed, its lull is held as ski rental (guards._rented)
    on the 20 L40S replicas that run, beyond the planning lookback where the load no longer
    shows below its peak. The move to one A100 that pays at 0.5 req/s (above, with a
    near-instant start) is sized at the load now and would drop what is held: it waits until the
    rental's budget is spent (750 s). At a load that never spiked it is made once the dwell
    allows (600 s)."""
    fast, svc = PlannerSettings(startup_s=1.0), service(last=replace(LAST_L40S, replicas=20), spec_changes="true")
    spiked = cycles(svc, [0.5] * 10 + [5.0] + [0.5] * 15, fast)  # cycles every 30 s: the spike at 300 s
    held = spiked[20]  # at 600 s
    assert not held.roll_out and held.decision.accelerator == "L40S" and "kept for a load it may come back to" in held.reason
    assert not any(p.roll_out for p in spiked[:25]) and spiked[25].roll_out  # at 750 s
    assert cycles(svc, [0.5] * 21, fast)[20].roll_out


def test_a_move_the_slos_need_is_made_below_a_recent_peak_too():
    last = LastDecision("L4", 4, 16, 300.0, 30.0, 5.0, 96.0, decided_at=0.0, spec_changed_at=0.0)
    svc, state = service(last=last, spec_changes="true"), PlannerState()
    plan(DATA.catalog, CAPACITY, [svc], {("prod", "chat"): observed(10.0)}, 970.0, state, PlannerSettings())
    result = plan(DATA.catalog, CAPACITY, [svc], {("prod", "chat"): observed(5.0, previous=10.0)}, 1000.0, state)[0]
    assert result.roll_out and result.decision.accelerator != "L4" and "cannot meet the SLOs" in result.reason


def test_a_change_the_slos_need_is_made_even_when_it_costs_more():
    last = LastDecision("L4", 4, 16, 300.0, 30.0, 5.0, 96.0, decided_at=0.0, spec_changed_at=0.0)
    result = plan_one(service(last=last, spec_changes="true"), 5.0)
    assert result.roll_out and result.decision.accelerator != "L4" and "cannot meet the SLOs" in result.reason


def test_no_roll_out_without_gpus_free_for_the_new_revision():
    svc = service(last=LAST_L40S, spec_changes="true")
    moved = only_plan(svc, 5.0, PlannerSettings(), free=CAPACITY)
    assert moved.roll_out and moved.decision.accelerator == "H100"
    held = only_plan(svc, 5.0, PlannerSettings(), free=CAPACITY | {"H100": moved.decision.replicas - 1})
    assert not held.roll_out and held.decision.accelerator == "L40S" and "no room for a new revision" in held.reason


def only_plan(svc, rate, settings, free=None, now=1000.0):
    plans = plan(DATA.catalog, CAPACITY, [svc], {("prod", "chat"): observed(rate)}, now, PlannerState(), settings, free=free)
    assert len(plans) == 1
    return plans[0]


def test_the_dwell_bounds_changes_per_isvc_per_hour():
    """An ISVC the optimizer wants to move every cycle (what it runs is put back to L40S after each
    move, as if the load had swung back), and a start so fast that every move pays: the dwell
    alone holds it to 3600 / spec_change_interval_s changes an hour."""
    settings = PlannerSettings(startup_s=1.0)
    last, changes = LAST_L40S, []
    for cycle in range(2 * 3600 // 30):
        now = 1000.0 + cycle * settings.period_s
        result = only_plan(service(last=last, spec_changes="true"), 2.0, settings, now=now)
        changes += [now] if result.roll_out else []
        last = replace(LAST_L40S, spec_changed_at=result.decision.spec_changed_at)
    assert len(changes) >= 6  # it does change: the bound below is the dwell's, not a lack of reasons
    most = max(sum(1 for t in changes if start <= t < start + 3600.0) for start in changes)
    assert most <= 3600.0 / settings.spec_change_interval_s == 6


def outgrown_gpu_type() -> Scenario:
    """mistral-7b alone, opened at 0.5 req/s on the cheapest type, the L40S, of which the cluster
    has two cards; at 600 s its load steps to 4 req/s, more than two L40S serve within the SLOs:
    the SLOs need a move to another type, whatever the planner's tuning (a roll-out by construction)."""
    world = default_world(60.0)
    gpus = dict(world.gpus) | {"L40S": replace(world.gpus["L40S"], capacity=2)}
    world = replace(world, gpus=gpus, isvcs=tuple(spec for spec in world.isvcs if spec.name == "mistral-7b"))
    rng = np.random.default_rng(1)
    duration_s = 1500.0
    rate = np.where(np.arange(int(duration_s)) < 600.0, 0.5, 4.0)
    return Scenario("outgrown", world, sized(poisson_arrivals(rate, rng), 0, builtin_trace("conv"), rng), duration_s)


def test_in_the_simulator_a_roll_out_starts_on_free_gpus_and_held_ones_are_not_offered(monkeypatch):
    """Ours on an ISVC that outgrows its GPU type's cards: every cycle the planner is offered the
    cluster less what superseded revisions hold, and every new revision gets a GPU for each of its
    replicas at once, so it turns Ready after one cold start."""
    scenario = outgrown_gpu_type()
    policy, initial = build_policy("ours", scenario, RunSettings(), {})
    assert initial[0].accelerator == "L40S"
    simulation = engine.Simulation(scenario, policy, initial)
    cards = {name: gpu.capacity for name, gpu in scenario.world.gpus.items()}
    offered, real_plan = [], model_based.plan

    def checked_plan(catalog, capacity, services, observed, now, state, settings, free=None):
        held: dict[str, int] = {}
        for simulated in simulation.isvcs:
            for revision in simulated.revisions[:-1]:
                held[revision.accelerator] = held.get(revision.accelerator, 0) + sum(r.has_gpu for r in revision.replicas)
        offered.append((held, capacity))
        assert capacity == {name: count - held.get(name, 0) for name, count in cards.items()}
        return real_plan(catalog, capacity, services, observed, now, state, settings, free=free)

    rolled, apply = [], simulation.apply

    def checked_apply(index, decision, initial=False):
        before = simulation.isvcs[index].revisions[-1]
        apply(index, decision, initial)
        newest = simulation.isvcs[index].revisions[-1]
        if newest is not before and not initial:
            rolled.append(newest)
            assert all(replica.has_gpu for replica in newest.replicas), "a new revision waits for GPUs"

    monkeypatch.setattr(model_based, "plan", checked_plan)
    simulation.apply = checked_apply
    result = simulation.run()
    assert rolled and rolled[0].accelerator != "L40S"  # the move the SLOs needed
    assert any(held for held, _ in offered)  # the superseded L40S revision held its GPUs meanwhile
    assert int(result.revisions.sum()) == len(rolled)  # what `simulate --json` reports as revisions
    assert all(revision.promoted or not revision.replicas for revision in rolled[:-1])
    for gpu, peak in result.peak_gpus.items():
        assert peak <= cards[gpu]
