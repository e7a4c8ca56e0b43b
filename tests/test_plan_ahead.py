"""Planning ahead (policy/guards.py): the rate a decision is sized for covers the load expected
until the replicas it asks for serve, with a margin for the burstiness measured, and
requests building up between cycles bring the next cycle forward, in the simulator here and in the
controller on the real kube-apiserver (tests/e2e/test_planning_cycles.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from autoscaler.policy.decisions import LastDecision
from autoscaler.policy.guards import (
    ArrivalHistory,
    GuardSettings,
    Sample,
    dispersion,
    forecast_rate,
    level_seen,
    planned_rate,
    present_bound,
    queue_building,
    rate_now,
    retained_rate,
    z_score,
)
from autoscaler.policy.planner import PlannerSettings, PlannerState, early_cycle, recall
from autoscaler.simulator.engine import Simulation
from autoscaler.simulator.policies.model_based import ModelBasedPolicy
from autoscaler.simulator.runner import _loads
from autoscaler.simulator.scenarios import build_scenario
from autoscaler.simulator.traffic import Requests, builtin_trace, poisson_arrivals, sized

from .test_controller_planning import DATA, observed, plan_one, service

Z = z_score(0.95)
WINDOW, PERIOD, STARTUP = 60.0, 30.0, 90.0
HORIZON = STARTUP + PERIOD
DRAIN = GuardSettings().backlog_drain_s


def plan_rates(
    rates: list[float], backlog: float = 0.0, history: ArrivalHistory | None = None, missed: float = 0.0
) -> list[float]:
    """The rate planned at each cycle (one per period) for these measured rates, each window's
    rate the one before it: no trend, only the history (kept in `history` where given), with
    `missed` of each window's requests outside the SLOs."""
    history, planned = history if history is not None else ArrivalHistory(), []
    for cycle, rate in enumerate(rates):
        previous = rates[cycle - 1] if cycle else rate
        planned.append(
            planned_rate(
                rate,
                previous,
                window_s=WINDOW,
                period_s=PERIOD,
                startup_s=STARTUP,
                backlog=backlog,
                in_system=0.0,
                history=history,
                now=1000.0 + PERIOD * cycle,
                goal=0.95,
                settings=GuardSettings(),
                served=rate * WINDOW,
                missed=missed * rate * WINDOW,
            )  # fmt: skip
        )
    return planned


def test_the_goal_quantile_of_poisson_arrivals_over_the_horizon():
    assert Z == pytest.approx(1.645, abs=1e-3)
    steady = plan_rates([10.0] * 6)
    # the mean rate over the 120 s horizon of Poisson arrivals at 10 req/s deviates by sqrt(10 / 120)
    assert steady[-1] == pytest.approx(10.0 + Z * (10.0 / HORIZON) ** 0.5)


def test_bursty_arrivals_get_more_headroom_but_never_beyond_the_recent_peak():
    assert dispersion([10.0, 10.0, 10.0], WINDOW) == 1.0  # no variance beyond Poisson counts as Poisson
    assert dispersion([5.0, 15.0, 5.0, 15.0], WINDOW) == pytest.approx(100.0 / 3 * 60 / 10)
    swinging = plan_rates([10.0, 12.0, 10.0, 12.0, 10.0])[-1]
    steady = plan_rates([10.0] * 5)[-1]
    assert swinging > steady  # the same rate now, more variable before: a higher quantile
    # a square wave between 10 and 40 req/s: in the trough, plan for where it just was (the peak
    # with its Poisson deviation), not for 40 plus the wave's whole spread
    trough = plan_rates([40.0, 40.0, 10.0, 10.0, 10.0, 10.0])
    assert trough[3] <= 40.0 + Z * (40.0 / HORIZON) ** 0.5 + 1e-9


def test_after_a_large_fall_the_margin_lasts_while_the_peak_is_within_the_lookback():
    # 40 req/s, then 10: the lookback is 90 + 30 + 2 x 60 = 240 s, eight periods
    planned = plan_rates([40.0] * 4 + [10.0] * 10)
    poisson = 10.0 + Z * (10.0 / HORIZON) ** 0.5
    assert all(poisson + 5 < p < planned[3] for p in planned[4:12])  # the swing's dispersion: a wide margin
    assert planned[12] == planned[-1] == pytest.approx(poisson)  # 270 s after the last 40: gone from the lookback


def test_a_queue_building_beyond_noise_asks_for_an_early_cycle():
    history = ArrivalHistory()
    assert not queue_building(history, 500.0, 1000.0, 0.95)  # no cycle yet: nothing to compare with
    history.record(Sample(1000.0, 20.0, in_system=40.0), 300.0)
    # 10 s at 20 req/s: arrivals and completions each deviate by about sqrt(200)
    noise = Z * (2 * 20.0 * 10.0) ** 0.5
    assert not queue_building(history, 40.0 + noise - 1, 1010.0, 0.95)
    assert queue_building(history, 40.0 + noise + 1, 1010.0, 0.95)
    assert not queue_building(history, 10.0, 1010.0, 0.95)  # draining

    state = PlannerState(arrivals={("prod", "chat"): history})
    assert early_cycle(state, {("prod", "chat"): 200.0, ("prod", "new"): 900.0}, 1010.0, PlannerSettings()) == [("prod", "chat")]


def test_a_queue_building_is_planned_for_the_most_the_rate_may_be_now_while_within_the_goal():
    """A rise's start: the window's mean up from 10 to 14 req/s within 15 s. The forecast reads
    the rate now as the mean plus its lag at that pace (22); the most it may be is the rise
    read as a step just before the earlier cycle (14 + 4 x 60 / 15 = 30). With the queue grown
    beyond noise since that cycle the fleet is short already, and the cycle plans for the
    bound; without it, or for an ISVC beyond its goal (where no level seen holds the bound), for
    the forecast and its margin."""

    def planned(in_system: float, missed: float) -> float:
        history = ArrivalHistory()
        for t in range(700, 1001, 30):
            history.record(Sample(float(t), 10.0, in_system=20.0, served=600.0, missed=missed), 300.0)
        return planned_rate(
            14.0, 10.0, window_s=WINDOW, period_s=PERIOD, startup_s=STARTUP, backlog=0.0, in_system=in_system,
            history=history, now=1015.0, goal=0.95, settings=GuardSettings(),
        )  # fmt: skip

    bound = present_bound(14.0, 10.0, apart_s=15.0, window_s=WINDOW, z=Z)
    assert bound == pytest.approx(30.0)
    building = 20.0 + Z * (2 * 10.0 * 15.0) ** 0.5 + 1  # queue_building's noise, exceeded
    assert planned(building, missed=0.0) == pytest.approx(bound)
    quiet = planned(21.0, missed=0.0)
    assert 22.0 < quiet < 24.0  # the forecast and its margin
    assert planned(building, missed=100.0) == pytest.approx(quiet)  # a sixth missed: beyond the goal


def test_a_restarted_planner_plans_as_for_poisson_arrivals():
    """What a restart loses where Prometheus gives nothing back (planner.recall): the history.
    The first cycle after it sizes for the measured rate with Poisson headroom, without the
    burstiness seen before it."""
    before = plan_rates([40.0, 10.0, 40.0, 10.0])
    after = plan_rates([10.0])
    assert after[0] == pytest.approx(10.0 + Z * (10.0 / HORIZON) ** 0.5)
    assert before[-1] > after[0] + 10  # with it: a margin for the swings seen


def test_a_planner_started_beside_a_running_isvc_recalls_the_load_before_its_start():
    """planner.recall: the cycles before the start, as the collector read them then, are the
    history the first plan has, so it sizes with the swings seen before it where a start from
    one window sizes as for Poisson arrivals. A cycle no older than the newest one the ISVC has
    is not recalled, nor an unusable observation (left out as plan leaves it)."""
    chat, key = service(), ("prod", "chat")
    fresh, started = PlannerState(), PlannerState()
    for at, rate in ((910.0, 40.0), (940.0, 10.0), (970.0, 40.0)):
        recall(DATA.catalog, [chat], {key: observed(rate)}, at, started, PlannerSettings())
    assert [s.rate for s in started.arrivals[key].samples] == [40.0, 10.0, 40.0]
    recall(DATA.catalog, [chat], {key: observed(99.0)}, 970.0, started, PlannerSettings())  # not older
    recall(DATA.catalog, [chat], {key: observed(math.nan)}, 980.0, started, PlannerSettings())  # unusable
    assert [s.rate for s in started.arrivals[key].samples] == [40.0, 10.0, 40.0]
    without, with_past = plan_one(chat, 10.0, fresh), plan_one(chat, 10.0, started)
    assert with_past.decision.arrival_rate == without.decision.arrival_rate == 10.0
    assert with_past.decision.replicas > without.decision.replicas


def burst_scenario(burst_at: float | None, seconds: float = 240.0):
    """code-1b of the default world alone (the model sizes it well: nothing builds up on steady
    traffic), its arrivals ten times as many from `burst_at`."""
    scenario = build_scenario("steady", duration_s=seconds, seed=1)
    world = dataclasses.replace(scenario.world, isvcs=scenario.world.isvcs[1:2])
    ours = scenario.requests.isvc == 1
    r = scenario.requests
    requests = Requests(r.time[ours], np.zeros(ours.sum(), dtype=int), r.in_tokens[ours], r.out_tokens[ours])
    parts = [requests]
    if burst_at is not None:
        rng = np.random.default_rng(7)
        rate = len(requests) / seconds
        extra = poisson_arrivals(np.where(np.arange(int(seconds)) >= burst_at, 9.0 * rate, 0.0), rng)
        parts.append(sized(extra, 0, builtin_trace("code"), rng))
    return dataclasses.replace(scenario, world=world, requests=Requests.merge(parts))


def decision_times(scenario) -> list[float]:
    policy = ModelBasedPolicy(scenario.world, _loads(scenario, 0.0, 60.0))
    times = []
    decide = policy.decide

    def recorded(now, views):
        times.append(now)
        return decide(now, views)

    policy.decide = recorded
    Simulation(scenario, policy, policy.initial).run()
    return times


def test_a_burst_brings_the_simulators_decision_forward():
    burst = decision_times(burst_scenario(burst_at=100.0))
    early = [t for t in burst if t % PERIOD]
    assert early and 100.0 < early[0] < 120.0  # before the period's cycle at 120 s
    spacing = PlannerSettings().early_interval_s
    assert all(b - a >= spacing for a, b in zip(burst, burst[1:], strict=False) if b % PERIOD)  # rate-limited
    assert all(t % PERIOD == 0 for t in decision_times(burst_scenario(burst_at=None)))  # steady: no early cycle


def test_the_rate_now_is_the_windows_mean_corrected_for_its_lag():
    # a steady rise of 1 req/s per 15 s: the trailing minute's mean lags it by half a minute
    assert forecast_rate(11.0, 10.0, apart_s=15.0, window_s=WINDOW, z=Z, settings=GuardSettings()) == pytest.approx(13.0)
    # at most the lag's rise again: a step just before the earlier cycle shows a quarter of itself
    # in the mean 15 s later, so the rate now may be the whole minute's rise above it
    assert present_bound(11.0, 10.0, apart_s=15.0, window_s=WINDOW, z=Z) == pytest.approx(15.0)
    # within Poisson noise of the difference (sqrt(21 x 15) / 60 = 0.3 req/s): no rise
    assert present_bound(10.2, 10.0, apart_s=15.0, window_s=WINDOW, z=Z) == 10.2
    assert forecast_rate(10.2, 10.0, apart_s=15.0, window_s=WINDOW, z=Z, settings=GuardSettings()) == 10.2


def test_a_rising_load_keeps_what_serves_up_to_the_rate_it_may_be_now():
    """A window's mean lags a step: 15 s after the load stepped up the mean shows a quarter of
    the step, and a count sized for it would release replicas just as the load needs them."""

    def decided(serving: int, rates: tuple[float, float]):
        last = LastDecision("H100", serving, 64, 300.0, 30.0, 2.0, 150.0, decided_at=900.0, avg_in_tokens=512, avg_out_tokens=256)
        state = PlannerState()
        for now, rate in zip((985.0, 1000.0), rates, strict=True):
            result = plan_one(service(last=last), obs=observed(rate, previous=rates[0]), state=state, now=now)
        return result.decision

    steady, rising = decided(8, (3.0, 3.0)), decided(8, (2.0, 3.0))
    bound = present_bound(3.0, 2.0, apart_s=15.0, window_s=WINDOW, z=Z)  # 7 req/s
    assert steady.replicas < rising.replicas == min(8, math.ceil(bound / rising.replica_capacity))
    assert rising.replicas < 8  # what serves beyond the rate it may be now still goes
    # it keeps, never adds: with one serving, the count is the sizing's for the rate planned (the
    # rate now, 5 req/s), below the bound's
    assert 1 < decided(1, (2.0, 3.0)).replicas < rising.replicas


def test_a_rise_back_within_a_level_seen_is_bounded_by_it_while_the_isvc_keeps_within_its_goal():
    """A window's mean that rose from 10 to 25 req/s since the cycle 30 s before may be hiding a
    step to 55 (present_bound). Where the load has been at 40 within the memory and the ISVC
    meets its goal, the rise is bounded by that level, its highest window's mean: on a square
    wave the bound kept the last peak's replicas at every rise, where the level's count served.
    A first rise to 25, or an ISVC missing 15% of its requests against the 5% its goal allows,
    keeps the whole bound."""

    def present(rates: list[float], missed: float = 0.0) -> float:
        history = ArrivalHistory()
        plan_rates(rates, history=history, missed=missed)
        return history.samples[-1].present

    back = [10.0] * 8 + [40.0] * 4 + [10.0] * 8 + [25.0]
    assert present(back) == pytest.approx(40.0)
    assert present([10.0] * 8 + [25.0]) == pytest.approx(present_bound(25.0, 10.0, apart_s=PERIOD, window_s=WINDOW, z=Z))
    assert present(back, missed=0.15) == pytest.approx(present_bound(25.0, 10.0, apart_s=PERIOD, window_s=WINDOW, z=Z))
    assert present_bound(25.0, 10.0, apart_s=PERIOD, window_s=WINDOW, z=Z) == pytest.approx(55.0)


def test_a_rise_back_within_a_level_seen_is_planned_for_that_level_not_its_extrapolation():
    """A window's mean risen from 10 to 38 req/s in 30 s extrapolates to 67 (planned, held by the
    HPA for 300 s); after a level of 40 the plan is that level, the highest of its windows'
    means, with no Poisson margin on top (41.3 before: a replica more at the top of a return,
    held by the HPA). Not where the load has had no levels (a flat load's highest window is its
    noise, and a first rise from it must keep its extrapolation), where the short window is
    already past the level beyond its Poisson margin, where the rise is beyond it, or where the
    ISVC misses beyond its goal."""
    level = 40.0
    assert plan_rates([10.0] * 8 + [40.0] * 4 + [10.0] * 8 + [38.0])[-1] == pytest.approx(level)
    assert plan_rates([10.0] * 8 + [38.0])[-1] > 67.0

    def seen(rates: list[float], rate: float, recent: float | None = None, missed: float = 0.0) -> float | None:
        history = ArrivalHistory()
        plan_rates(rates, history=history, missed=missed)
        return level_seen(history.samples, rate, recent, PERIOD, window_s=WINDOW, z=Z, goal=0.95)

    back = [10.0] * 8 + [40.0] * 4 + [10.0] * 8
    assert seen(back, 38.0) == pytest.approx(level)
    assert seen(back, 38.0, recent=41.0) == pytest.approx(level)  # the short window within its noise
    assert seen(back, 38.0, recent=45.0) is None  # past 40 + 1.64 x sqrt(40 / 30)
    assert seen(back, 41.0) is None
    assert seen(back, 38.0, missed=0.15) is None
    counts = np.random.default_rng(1).poisson(10.0 * WINDOW, 20)  # a flat Poisson load's windows
    assert seen(list(counts / WINDOW), float(counts.max() / WINDOW)) is None


RECENT = PERIOD  # the short window: the last period


def mean_over(load, start: float, end: float) -> float:
    """The exact mean of `load` (req/s as a function of time) over [start, end]."""
    return float(np.mean(load(np.linspace(start, end, 2001))))


def rates_now(load, cycles: list[float]) -> list[tuple[float, float, float]]:
    """At each cycle: the load now, the window's forecast alone (forecast_rate) and it held to
    the short window (rate_now), from exact window means (no noise)."""
    result, last_recent = [], None
    for last, now in zip(cycles, cycles[1:], strict=False):
        rate, earlier = mean_over(load, now - WINDOW, now), mean_over(load, last - WINDOW, last)
        recent = mean_over(load, now - RECENT, now)
        forecast = forecast_rate(rate, earlier, apart_s=now - last, window_s=WINDOW, z=Z, settings=GuardSettings())
        held = rate_now(
            forecast, rate, recent, recent_s=RECENT, window_s=WINDOW, z=Z, last_recent=last_recent, since_last_s=now - last
        )
        result.append((float(load(np.array([now]))[0]), forecast, held))
        last_recent = recent
    return result


def test_a_step_that_has_ended_is_not_extrapolated():
    """10 to 40 req/s at once, cycles every 15 s: the window's rise extrapolated over its lag
    reads up to 55 (1.5x the step) a minute after it, which the HPA would hold for 300 s; the
    short window, flat at 40 once the step has passed through it, holds the forecast to within
    a sixth of the step (the one cycle where every pair of windows still sees it rising)."""
    step = lambda t: np.where(t >= 0.0, 40.0, 10.0)  # noqa: E731
    seen = rates_now(step, [float(t) for t in range(-15, 136, 15)])
    assert max(forecast for _, forecast, _ in seen) > 54.0
    assert max(held for _, _, held in seen) < 40.0 + 30.0 / 6 + 0.1
    assert all(held <= forecast for _, forecast, held in seen)
    assert seen[-1][2] == pytest.approx(40.0)  # through the window: its mean


def test_a_ramp_still_rising_keeps_its_extrapolation():
    """1 req/s more every 2 s: every pair of windows reads the same rate now, so the short
    window holds nothing back and the forecast is the load now, not the lagging mean."""
    ramp = lambda t: 10.0 + np.clip(t, 0.0, None) / 2  # noqa: E731
    for now_load, forecast, held in rates_now(ramp, [float(t) for t in range(60, 181, 15)]):
        assert held == forecast == pytest.approx(now_load, rel=1e-3)


def test_short_window_noise_does_not_hold_a_rise_back():
    """A rise the window sees beyond noise, and a short window only a little lower than the
    forecast (within its own Poisson deviations, as over a 30 s count at 35 req/s): the
    forecast stands. The short window counts only beyond noise, as a rise does (rise_beyond_noise)."""
    forecast = forecast_rate(34.5, 33.0, apart_s=30.0, window_s=WINDOW, z=Z, settings=GuardSettings())
    assert forecast > 34.5
    noise = Z * math.sqrt(35.0 / RECENT)
    held = rate_now(forecast, 34.5, 35.0 - noise / 2, recent_s=RECENT, window_s=WINDOW, z=Z, last_recent=34.0, since_last_s=30.0)
    assert held == forecast


def retained(levels: list[tuple[float, float]], held_s: float = 300.0, missed: float = 0.0, opened: bool = True) -> float:
    """retained_rate at the end of `levels` ((seconds, req/s) held in turn), one cycle a period,
    beyond an HPA scale-down window of `held_s`, with `missed` of each window's requests outside
    the SLOs (the goal of 95% allows 5%); `opened`: the first level is the ISVC's first (False:
    a memory that lost its oldest cycles)."""
    rates, now = [], 0.0
    for seconds, rate in levels:
        for _ in range(int(seconds // PERIOD)):
            served = rate * WINDOW
            rates.append(Sample(now, rate, in_system=0.0, served=served, missed=missed * served))
            now += PERIOD
    return retained_rate(
        rates,
        rates[-1].time,
        held_s=held_s,
        period_s=PERIOD,
        horizon_s=HORIZON,
        window_s=WINDOW,
        z=Z,
        drain_s=DRAIN,
        miss_budget=1.0 - 0.95,
        opened=opened,
    )


def test_rises_that_recur_beyond_the_hpa_window_keep_the_peak_between_them():
    """Bursts to 40 req/s for two minutes, from 10, every 10 minutes: the HPA's 300 s window
    has released the burst's replicas before the next, and each burst would queue a horizon's
    arrivals behind a fleet sized for 10. Each costs, in requests: the 40 x 120 s it exposes,
    the cold start of replicas for its 30 req/s of excess (30 x 90 s), and its backlog of
    30 x 120 s, worked off within backlog_drain_s (60 s) by replicas for 60 req/s that start
    (90 s) and the HPA then holds (300 s): 3600 x 390 / 60. 30900 in all, where keeping the
    peak 180 s more until the next burst costs what its 30 req/s of replicas serve in them,
    5400. After three of them, the planner keeps the peak past each burst long enough that,
    with the HPA's window after its last decision, the replicas last until the next: the
    HPA's window extended to the time between rises."""
    burst = [(480.0, 10.0), (120.0, 40.0)]
    assert retained(burst * 3 + [(210.0, 10.0)]) == pytest.approx(40.0)


def test_a_lull_longer_than_any_replayed_is_held_as_ski_rental():
    """The bursts above, then a lull longer than the 8 minutes replayed: the replay says nothing
    of it, and the level is kept until what keeping its 30 req/s of excess has cost beyond the
    HPA's 300 s window, through the coming period, reaches what a burst cost left to a cold
    start: its shortfall beyond noise (40 less 1.9 of Poisson noise, over 10: 28.1 req/s) for
    the horizon (120 s), the cold start of its replicas (90 s) and its backlog's replicas held
    by the HPA (120 x 390 / 60 s): 990 s of it, 27,840 requests. Kept 1,140 s into the lull
    (26,100 of rent), released at 1,260 (29,700)."""
    burst = [(480.0, 10.0), (120.0, 40.0)]
    assert retained(burst * 3 + [(1140.0, 10.0)]) == pytest.approx(40.0)
    assert retained(burst * 3 + [(1260.0, 10.0)]) == pytest.approx(10.0)  # the replay's span alone


def test_misses_beyond_what_the_goal_allows_price_a_saved_request_dearer():
    """An ISVC missing 15% of its requests, three times the 5% its 95% goal allows, prices a
    request a hold saves at three: the lull above, held as ski rental for a return worth 27,840
    requests, is kept until its rent reaches 83,520 (30 req/s for 2,784 s beyond the HPA's
    window): kept 3,000 s into the lull, released at 3,060 (the replay's span alone). The bursts
    25 minutes apart, whose hold cost more than each one saved (36,000 against 30,900
    requests, below), are held (92,700). Within its goal (4% missed), nothing changes."""
    burst = [(480.0, 10.0), (120.0, 40.0)]
    assert retained(burst * 3 + [(3000.0, 10.0)], missed=0.15) == pytest.approx(40.0)
    assert retained(burst * 3 + [(3060.0, 10.0)], missed=0.15) == pytest.approx(10.0)
    assert retained(burst * 3 + [(1260.0, 10.0)], missed=0.04) == pytest.approx(10.0)
    apart = [(1500.0, 10.0), (120.0, 40.0)] * 3 + [(210.0, 10.0)]
    assert retained(apart, missed=0.04) == 0.0
    assert retained(apart, missed=0.15) == pytest.approx(40.0)


def test_the_planner_keeps_each_windows_requests_and_misses_with_its_cycle():
    """What prices a saved request (guards._miss_price) is read from the windows the planner
    plans from: the requests that got their first token, and those outside the SLOs, read as
    the collector reads vLLM's buckets. Here every request of the second window took 30 s to
    its first token, in one bucket from 0 to 30 s: 1/30 of it within the 1 s SLO, by the linear
    interpolation inside the bucket, so 290 of the 300 missed."""
    state = PlannerState()
    plan_one(service(), state=state, obs=observed(5.0, ttft_s=0.2))
    plan_one(service(), state=state, obs=observed(5.0, ttft_s=30.0), now=1030.0)
    samples = state.arrivals[("prod", "chat")].samples
    assert [(s.served, s.missed) for s in samples] == [(300.0, 0.0), (300.0, pytest.approx(290.0))]


def test_returns_within_the_hpa_window_are_evidence_for_ski_rental():
    """The 2.5-minute square wave: each return to 40 comes within the HPA's window, so the
    replay exposes none and prices no span; but the load has come back from its lulls, so a
    lull that outlasts the window is held as ski rental (990 s of rent, as above). A flash
    crowd's fall is not: its one rise was to a level never seen."""
    square = [(150.0, 40.0), (150.0, 10.0)] * 8
    assert retained(square + [(600.0, 10.0)]) == pytest.approx(40.0)
    assert retained(square + [(1500.0, 10.0)]) == 0.0
    assert retained([(1200.0, 10.0), (600.0, 40.0), (900.0, 10.0)]) == 0.0


def test_a_spike_gone_before_its_replicas_could_serve_is_evidence_for_ski_rental():
    """A burst to 40 req/s from 10 for one minute, over before replicas asked for it could
    serve (a horizon, 120 s): no reaction serves such a burst, only a fleet kept for it, so
    its lull is held as ski rental from the first one, as after a return (990 s of rent, as
    above): kept 1,140 s into the lull, released at 1,260. A rise that lasts (the flash
    crowd's 10 minutes) is served by the replicas it asks for, and earns none."""
    spike = [(1200.0, 10.0), (60.0, 40.0)]
    assert retained(spike + [(1140.0, 10.0)]) == pytest.approx(40.0)
    assert retained(spike + [(1260.0, 10.0)]) == 0.0
    assert retained([(1200.0, 10.0), (600.0, 40.0), (1140.0, 10.0)]) == 0.0


def test_the_level_an_isvc_opened_at_is_held_through_its_first_lull_as_a_return():
    """40 req/s from the ISVC's first cycle for 10 minutes, then 10: a rise before the planner's
    first cycle (its start, or the controller's) reached 40, so its first lull is held as ski
    rental as after a return, from the least rate since (990 s of rent, as above): kept 1,140 s
    into the lull, released at 1,260. A memory that has dropped its oldest cycles opens at a cut,
    not at a level the load rose to, and holds nothing for it. (MMPP at 120 s on seed 2:
    mistral-7b opened at 8 req/s, released three of its four A100s over a nine-minute lull, and
    its first return missed 1,713 requests.)"""
    opening = [(600.0, 40.0)]
    assert retained(opening + [(1140.0, 10.0)]) == pytest.approx(40.0)
    assert retained(opening + [(1260.0, 10.0)]) == 0.0
    assert retained(opening + [(1140.0, 10.0)], opened=False) == 0.0
    history = ArrivalHistory()
    for k in range(121):  # an hour's memory of cycles 30 s apart: the first is still in it
        history.record(Sample(30.0 * k, 10.0, in_system=0.0), lookback_s=300.0, memory_s=3600.0)
    assert history.opened_since(3600.0 - 3600.0)
    history.record(Sample(3630.0, 10.0, in_system=0.0), lookback_s=300.0, memory_s=3600.0)
    assert not history.opened_since(3630.0 - 3600.0)


def test_a_hold_priced_for_small_rises_keeps_no_larger_peak():
    """Rises to 16 req/s from 10 that recur every 10 minutes are worth their hold, and then a
    first burst to 40, which no earlier rise reached: the span priced for the small rises
    holds their level, not the burst's within it, whose hold nothing priced (granite-13b on
    the bursty workload, seed 1: a 2.0 req/s cycle of its base level covered by one 8 minutes
    before kept its first spike's 5.6 req/s for three minutes more, four to six replicas
    where two served)."""
    rises = [(480.0, 10.0), (120.0, 16.0)]
    assert retained(rises * 3 + [(210.0, 10.0)]) == pytest.approx(16.0)
    assert retained(rises * 3 + [(480.0, 10.0), (120.0, 40.0), (210.0, 10.0)]) == pytest.approx(16.0)


def test_no_hold_where_it_costs_more_than_the_cold_starts_and_misses_it_saves():
    """The same bursts 27 and 32 minutes apart: keeping the peak through the gaps costs what
    30 req/s of replicas serve in 20-25 minutes of each (36000-45000 requests), more than the
    30900 each burst costs (above); the hold is left to the cold start."""
    for gap in (1500.0, 1800.0):
        assert retained([(gap, 10.0), (120.0, 40.0)] * 3 + [(210.0, 10.0)]) == 0.0
    assert retained([(1200.0, 10.0), (120.0, 40.0)] * 3 + [(210.0, 10.0)]) == pytest.approx(40.0)  # 27000: kept


def test_no_hold_where_the_hpa_window_already_spans_the_gaps_or_rises_do_not_recur():
    # the 2.5-minute square wave: the HPA's window holds the peak through each trough
    assert retained([(150.0, 40.0), (150.0, 10.0)] * 8) == 0.0
    # a flash crowd: one rise to a level never seen before, which no hold avoids
    assert retained([(1200.0, 10.0), (600.0, 40.0), (900.0, 10.0)]) == 0.0
    # steady arrivals, with Poisson noise in each window's rate
    noise = np.random.default_rng(7).poisson(10.0 * WINDOW, 120) / WINDOW
    assert retained([(PERIOD, float(rate)) for rate in noise]) == 0.0
    assert retained([(PERIOD, 10.0)] * 2) == 0.0  # too little to judge by


def test_between_recurring_bursts_what_serves_is_kept_for_the_burst():
    """From the cycles planned_rate records: 210 s into the trough after the third burst, the
    burst's rate is the one to keep what serves for (planner._held); the rate planned is the
    lookback's alone. One rise only: nothing kept."""

    def kept(rates: list[float]) -> float:
        history = ArrivalHistory()
        plan_rates(rates, history=history)
        samples = history.since(history.samples[-1].time - GuardSettings().rise_memory_s)
        assert samples == list(history.samples)  # an hour and less: all of it remembered
        return retained_rate(
            samples, samples[-1].time, held_s=300.0, period_s=PERIOD, horizon_s=HORIZON, window_s=WINDOW, z=Z, drain_s=DRAIN
        )

    burst = [10.0] * 16 + [40.0] * 4
    assert kept(burst * 3 + [10.0] * 7) == pytest.approx(40.0)
    assert plan_rates(burst * 3 + [10.0] * 7)[-1] < 25.0  # the lookback's margin after a fall
    assert kept([10.0] * 40 + [40.0] * 20 + [10.0] * 7) == 0.0
    # past the lulls replayed, ski rental (test_a_lull_longer_than_any_replayed_is_held_as_ski_rental):
    # kept 38 cycles into the lull, released at 40 once its budget is spent; one rise earns none
    assert kept(burst * 3 + [10.0] * 38) == pytest.approx(40.0)
    assert kept(burst * 3 + [10.0] * 40) == pytest.approx(10.0)
    assert kept([10.0] * 40 + [40.0] * 20 + [10.0] * 40) == 0.0


def test_one_history_serves_the_lookback_and_the_rise_memory():
    """The cycles are kept over the rise memory; the lookback's readers (the dispersion, the lull
    check, the identifying window's rise check) read only the lookback of them."""
    history = ArrivalHistory()
    plan_rates([40.0] * 4 + [10.0] * 10, history=history)
    assert len(history.samples) == 14  # the rise memory: an hour
    assert history.rates() == [10.0] * 9  # the lookback: 90 + 30 + 2 x 60 = 240 s, both ends
    assert history.rates(history.samples[0].time) == [40.0] * 4 + [10.0] * 10


def test_the_hold_is_judged_beyond_the_scale_down_window_in_force():
    """The 2.5-minute square wave: the HPA's 300 s window holds the peak through each 150 s
    trough, but the one collector window written while a model with no profile is identified
    (Plan.scale_down_s) does not, and each rise would queue a horizon's arrivals: held."""
    wave = [(150.0, 40.0), (150.0, 10.0)] * 8
    assert retained(wave, held_s=300.0) == 0.0
    assert retained(wave, held_s=WINDOW) == pytest.approx(40.0)


def test_a_hold_between_rises_keeps_what_serves_and_never_adds():
    """210 s into a trough of 2 req/s after an hour of bursts to 6 every 10 minutes: the
    planner keeps what serves up to the count for the burst (a scale-down hold, as the HPA's
    window), and never starts a replica for it."""

    def decided(serving: int, bursts: bool):
        last = LastDecision("H100", serving, 64, 300.0, 30.0, 2.0, 150.0, decided_at=970.0, avg_in_tokens=512, avg_out_tokens=256)
        state = PlannerState()
        if bursts:
            history = state.arrivals.setdefault(("prod", "chat"), ArrivalHistory())
            levels = ([2.0] * 16 + [6.0] * 4) * 5 + [2.0] * 6
            for cycle, rate in enumerate(levels):
                history.record(Sample(1000.0 - PERIOD * (len(levels) - cycle), rate, 0.0), 0.0, GuardSettings().rise_memory_s)
        return plan_one(service(last=last), obs=observed(2.0), state=state, now=1000.0).decision

    free, held = decided(8, bursts=False), decided(8, bursts=True)
    assert free.replicas < held.replicas == min(8, math.ceil(6.0 / held.replica_capacity))
    assert decided(1, bursts=True).replicas == decided(1, bursts=False).replicas  # never adds


def test_the_planner_holds_the_level_an_isvc_opened_at_only_while_its_memory_holds_that_opening():
    """planner._held tells retained_rate whether the memory holds the ISVC's first cycle: ten
    minutes at 6 req/s from the first cycle, then ten at 2, keeps what serves up to the count
    for 6 (the opening rented as a return); the same cycles after an earlier one the memory has
    dropped open at a cut, and nothing is kept for them."""

    def decided(dropped_before: bool):
        last = LastDecision("H100", 8, 64, 300.0, 30.0, 2.0, 150.0, decided_at=970.0, avg_in_tokens=512, avg_out_tokens=256)
        state = PlannerState()
        history = state.arrivals.setdefault(("prod", "chat"), ArrivalHistory())
        memory = GuardSettings().rise_memory_s
        levels = [6.0] * 20 + [2.0] * 20
        start = 1000.0 - PERIOD * len(levels)
        if dropped_before:  # a cycle beyond the memory, dropped at the next record
            history.record(Sample(start - memory - PERIOD, 6.0, 0.0), 0.0, memory)
        for cycle, rate in enumerate(levels):
            history.record(Sample(start + PERIOD * cycle, rate, 0.0), 0.0, memory)
        assert len(history.samples) == len(levels)
        return plan_one(service(last=last), obs=observed(2.0), state=state, now=1000.0).decision

    opened, cut = decided(dropped_before=False), decided(dropped_before=True)
    assert cut.replicas < opened.replicas == min(8, math.ceil(6.0 / opened.replica_capacity))


def _held_in_a_trough(serving: int, scale_down_s: int | None, obs) -> int:
    """planner._held's count in a trough of an hour of 2.5-minute waves between 6 and 2 req/s
    (3 req/s a replica; the plan asks 1), with `serving` replicas ready."""
    from autoscaler.optimizer.domain import Allocation
    from autoscaler.policy.planner import _held

    last = LastDecision("H100", 8, 64, 300.0, 30.0, 2.0, 150.0, decided_at=970.0, avg_in_tokens=512, avg_out_tokens=256)
    chat = service(last=last)
    state = PlannerState()
    state.learned.serving[chat.key] = (serving, 0.0)
    history = state.arrivals.setdefault(("prod", "chat"), ArrivalHistory())
    levels = ([6.0] * 5 + [2.0] * 5) * 6
    for cycle, rate in enumerate(levels):
        history.record(Sample(1000.0 - PERIOD * (len(levels) - 1 - cycle), rate, 0.0), 0.0, GuardSettings().rise_memory_s)
    trough = Allocation(chat.key, "H100", 1, 64, 1.0, 0.0, 30.0, 300.0, 3.0)
    settings = PlannerSettings()
    return _held(state, chat, trough, 3.0, obs, 1000.0, settings, scale_down_s, z_score(settings.attainment_goal)).num_replicas


def test_the_planner_holds_beyond_the_hpa_window_it_writes():
    """planner._held judges the hold beyond the scale-down window the plan writes: the HPA's
    default holds a 2.5-minute wave's peak through its troughs (nothing to add), one collector
    window (a model with no profile being identified) does not, so the planner keeps what
    serves up to the count for the peak."""
    assert _held_in_a_trough(8, None, observed(2.0)) == 1
    assert _held_in_a_trough(8, 60, observed(2.0)) == 2  # 6 req/s at 3 per replica


def test_the_planner_holds_replicas_still_starting_on_a_gpu():
    """planner._held keeps what holds a GPU, not only what serves: at a startup beyond the HPA's
    window, the replicas a spike asked for are still starting when the window lets them go,
    and letting them go before they serve wastes their cold start and leaves the next spike to
    another. One replica serves, two more start on their nodes, and the memory has peaks of 6
    req/s at 3 per replica: two are kept; one with none starting, with the pods not known (a
    roll-out in flight), or with the other two waiting for a GPU (a pod no node has taken holds
    nothing)."""

    def held(bound: int | None, unbound: int | None = 0) -> int:
        obs = dataclasses.replace(observed(2.0), ready_replicas=1, bound_pods=bound, unbound_pods=unbound)
        return _held_in_a_trough(1, 60, obs)

    assert held(bound=3) == 2  # 6 req/s at 3 per replica, of the three on GPUs
    assert held(bound=1) == 1  # nothing starting: what serves
    assert held(bound=None, unbound=None) == 1  # not known (a revision in flight): what serves
    assert held(bound=1, unbound=2) == 1  # pods waiting for a GPU hold none


def test_the_opening_reads_its_first_minutes_rise_as_a_collector_would(monkeypatch):
    """The simulator's opening is a window a controller watched with nothing before it: its
    collector's short window (the last 30 s) shows chat-8b's first minute of the Azure
    conversation trace, replayed from its first request, rising (13.9 then 20.2 req/s), and ours
    opens on two replicas; from the minute's mean alone (17 req/s) it opened on one, which missed
    455 requests before a second served. The reactive baselines watched it too: an HPA holds its
    busiest sync's count (20.8 req/s over the last 15 s, against a load-tested 17.3 a replica:
    two), where at the minute's mean it opened on one."""
    from autoscaler.simulator import workloads
    from autoscaler.simulator.load_test import ReplicaCapacity
    from autoscaler.simulator.runner import PLANNING_WINDOW_S, RunSettings, build_policy
    from autoscaler.simulator.traffic import Trace

    def from_the_first_request(trace, duration_s, rng):
        window = Trace(trace.time[:-1], trace.in_tokens[:-1], trace.out_tokens[:-1])
        return window, Trace(*(np.empty(0),) * 3), trace.time[-1] / workloads.TRACE_COMPRESSION

    monkeypatch.setattr(workloads, "_trace_window", from_the_first_request)
    scenario = dataclasses.replace(workloads.build_workload("azure-conv", seed=1), past=None, past_s=0.0)
    _, initial = build_policy("ours", scenario, RunSettings(), {})
    assert initial[0].replicas == 2
    assert ModelBasedPolicy(scenario.world, _loads(scenario, 0.0, PLANNING_WINDOW_S)).initial[0].replicas == 1
    tested = {i: ReplicaCapacity(17.3 if i == 0 else 1e9, 10.0) for i in range(len(scenario.world.isvcs))}
    for baseline in ("hpa", "knative-kpa"):
        assert build_policy(baseline, scenario, RunSettings(), tested)[1][0].replicas == 2


def test_ours_and_the_reactive_baselines_open_on_a_traces_past_as_controllers_run_through_it():
    """A trace's window has a past (its loop before it): ours' controller recalls the planner's
    lookback of it (planner.recall, a period apart), the HPA's opening count holds the busiest
    sync of its 300 s scale-down window, KPA's of its 60 s stable window. Each as the opening
    minute is read: at time zero, from the minute after it, as though watched before it (a
    cycle at t reads [t, t + 60 s); the HPA's window is [-240 s, 60 s), KPA's the minute)."""
    from autoscaler.policy.guards import lookback_s
    from autoscaler.simulator.load_test import ReplicaCapacity
    from autoscaler.simulator.runner import PLANNING_WINDOW_S, RunSettings, build_policy
    from autoscaler.simulator.workloads import build_workload

    scenario = build_workload("azure-conv", seed=3, cold_start_s=60.0)
    policy, _ = build_policy("ours", scenario, RunSettings(), {})
    history = policy.state.arrivals[policy._key(0)]
    back = lookback_s(PLANNING_WINDOW_S, 30.0, 60.0)
    assert [s.time for s in history.samples] == [-30.0 * k for k in range(int(back // 30), 0, -1)]
    chat = np.concatenate([scenario.past.time[scenario.past.isvc == 0], scenario.requests.time[scenario.requests.isvc == 0]])
    for s in history.samples:
        assert s.rate == np.count_nonzero((chat >= s.time) & (chat < s.time + PLANNING_WINDOW_S)) / PLANNING_WINDOW_S

    # chat-8b's past twice as busy from 200 s before the start to 70 s before it: within the HPA's window, not KPA's
    extra = (scenario.past.isvc == 0) & (scenario.past.time >= -200.0) & (scenario.past.time < -70.0)
    p = scenario.past
    busier = dataclasses.replace(scenario, past=Requests.merge([p, p.where(extra)]))
    tested = {i: ReplicaCapacity(4.0 if i == 0 else 1e9, 10.0) for i in range(len(scenario.world.isvcs))}

    def busiest(s, start: float) -> float:
        times = np.concatenate([s.past.time[s.past.isvc == 0], s.requests.time[s.requests.isvc == 0]])
        times = times[(times >= start) & (times < PLANNING_WINDOW_S)]
        return np.bincount(((times - start) // 15.0).astype(int)).max() / 15.0

    for baseline, held_s in (("hpa", 240.0), ("knative-kpa", 0.0)):
        for s in (scenario, busier):
            assert build_policy(baseline, s, RunSettings(), tested)[1][0].replicas == math.ceil(busiest(s, -held_s) / 4.0)
    assert (
        build_policy("hpa", busier, RunSettings(), tested)[1][0].replicas
        > build_policy("hpa", scenario, RunSettings(), tested)[1][0].replicas
    )
    assert (
        build_policy("knative-kpa", busier, RunSettings(), tested)[1][0].replicas
        == build_policy("knative-kpa", scenario, RunSettings(), tested)[1][0].replicas
    )
