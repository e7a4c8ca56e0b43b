"""One planner, two bodies: the simulator's "ours" is the controller's planner fed with what
the controller's collector would observe.

- The observation the simulator builds from its request records equals what the collector's
  PromQL computes in a real Prometheus holding the vLLM series of the same requests.
- The simulator's policy applies what policy.planner.plan decides and has no sizing of its own.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

import autoscaler
from autoscaler.controller import controller, server
from autoscaler.controller.collector import CollectorSettings, PrometheusCollector, observations, queries
from autoscaler.policy.decisions import LastDecision
from autoscaler.policy.observation import within
from autoscaler.policy.planner import Plan
from autoscaler.policy.sizing import rate_variation
from autoscaler.optimizer.domain import Load
from autoscaler.simulator.engine import Decision, IsvcView
from autoscaler.simulator.observe import Observer, RequestRecords
from autoscaler.simulator.policies import model_based
from autoscaler.simulator.policies.model_based import ModelBasedPolicy
from autoscaler.simulator.runner import _loads
from autoscaler.simulator.scenarios import build_scenario

from .prometheus_server import PrometheusServer, free_port
from .vllm_emulator import RequestStream, openmetrics

BASE = 1_700_000_000.0  # unix time of the streams' zero
END = 240.0


def stream(namespace: str, name: str, rate_before: float, rate_after: float, seed: int) -> RequestStream:
    """Poisson arrivals whose rate steps up at 150 s; queueing, prefill and decode times spread
    over several histogram buckets; one request in twenty abandoned while waiting."""
    rng = np.random.default_rng(seed)
    before = rng.exponential(1 / rate_before, int(rate_before * 150))
    gaps = np.concatenate([before[np.cumsum(before) < 150], rng.exponential(1 / rate_after, int(rate_after * END))])
    arrival = np.cumsum(gaps)
    arrival = arrival[arrival < END]
    n = len(arrival)
    out = rng.integers(1, 200, n)
    admitted = arrival + rng.exponential(0.5, n)
    first = admitted + rng.uniform(0.05, 1.5, n)
    finish = first + (out - 1) * rng.uniform(0.01, 0.09, n)
    dropped = rng.random(n) < 0.05
    dropped_at = np.where(dropped, arrival + 0.4 * rng.random(n), math.inf)
    admitted[dropped] = first[dropped] = finish[dropped] = math.inf
    return RequestStream(namespace, name, "m", arrival, admitted, first, finish, dropped_at, rng.integers(10, 3000, n), out)


def clumped(namespace: str, name: str, seed: int) -> RequestStream:
    """stream()'s requests at 20 req/s kept only in alternate 10 s: clumps the 5 s probes see."""
    full = stream(namespace, name, 20.0, 20.0, seed)
    keep = (full.arrival // 10.0) % 2 == 0
    arrays = {f.name: getattr(full, f.name) for f in dataclasses.fields(full)}
    return dataclasses.replace(full, **{name: a[keep] for name, a in arrays.items() if isinstance(a, np.ndarray)})


def records_at(streams: list[RequestStream]) -> tuple[RequestRecords, Callable[[float], None]]:
    """The streams merged into the engine's request records and a function that reveals what
    the engine would have recorded by a given time."""
    order = np.argsort(np.concatenate([s.arrival for s in streams]), kind="stable")

    def merged(field: str) -> np.ndarray:
        return np.concatenate([getattr(s, field) for s in streams])[order]

    isvc = np.concatenate([np.full(len(s.arrival), i) for i, s in enumerate(streams)])[order]
    admitted, first, finish, dropped_at = merged("admitted"), merged("first"), merged("finish"), merged("dropped_at")
    n = len(order)
    records = RequestRecords(
        merged("arrival").tolist(),
        isvc.tolist(),
        merged("in_tokens").tolist(),
        merged("out_tokens").tolist(),
        [math.nan] * n,
        [math.nan] * n,
        [False] * n,
    )

    def reveal(t: float) -> None:
        records.first_token[:] = np.where(admitted <= t, first, math.nan).tolist()
        records.finish[:] = np.where(finish <= t, finish, math.nan).tolist()
        records.dropped[:] = (dropped_at <= t).tolist()

    return records, reveal


def test_observer_matches_the_collectors_promql_over_the_same_requests(tmp_path):
    streams = [stream("sim", "chat", 8.0, 14.0, seed=1), stream("sim", "code", 3.0, 3.0, seed=2), clumped("sim", "burst", 3)]
    records, reveal = records_at(streams)
    observer = Observer(records, len(streams), window_s=60.0, recent_s=30.0)
    for moment in np.arange(5.0, END + 1, 5.0):  # the queue probes, every 5 s, and the policy's ticks
        reveal(moment)
        if moment % 30.0:
            observer.in_system(moment)
        else:
            simulated = observer.observe(moment)

    settings = CollectorSettings(window_s=60, recent_s=30, dispersion_s=5)
    prometheus = PrometheusServer(tmp_path / "prometheus", free_port())
    prometheus.backfill(openmetrics(streams, [float(t) for t in range(int(END) + 1)], BASE)).start("up", 0)
    try:
        results = {name: prometheus.query(promql, BASE + END) for name, promql in queries(settings).items()}
    finally:
        prometheus.stop()
    collected = observations(results, settings)

    for stream_, sim in zip(streams, simulated, strict=True):
        prom = collected[(stream_.namespace, stream_.name)]
        # Prometheus 2.x reads a [60s] range inclusively and exactly; 3.x leaves its start out
        # and extrapolates the 59 s it has (1.7%)
        close = dict(rel=0.03, abs=1e-6)
        figures = ("arrival_rate", "previous_rate", "avg_in_tokens", "avg_out_tokens", "prompt_tokens_per_s", "ttft_ms", "itl_ms")
        # the arrivals' Allan factor over the probes' 5 s: the counters' own samples, differenced
        assert sim.arrival_dispersion == pytest.approx(prom.arrival_dispersion, rel=1e-6)
        assert (sim.dispersion_pairs, sim.dispersion_s) == (prom.dispersion_pairs, prom.dispersion_s) == (10, 5.0)
        for figure in figures:
            assert getattr(sim, figure) == pytest.approx(getattr(prom, figure), **close), figure
        assert (sim.running, sim.waiting) == (prom.running, prom.waiting)
        # the last period of the window: 3.x's 29 s of a [30s] range, extrapolated (3.4%)
        assert sim.recent_rate == pytest.approx(prom.recent_rate, rel=0.05) and sim.recent_s == prom.recent_s == 30.0
        for histogram, slos in (("ttft_buckets", (0.3, 1.0, 2.0)), ("tpot_buckets", (0.03, 0.08))):
            sim_buckets, prom_buckets = getattr(sim, histogram), getattr(prom, histogram)
            assert [b for b, _ in sim_buckets] == [b for b, _ in prom_buckets]
            assert [c for _, c in sim_buckets] == pytest.approx([c for _, c in prom_buckets], **close)
            for slo in slos:
                assert within(sim_buckets, slo) == pytest.approx(within(prom_buckets, slo), **close)
    chat = simulated[0]
    assert chat.arrival_rate > chat.previous_rate * 1.3 and chat.waiting > 0  # the step up is seen
    assert simulated[1].arrival_dispersion < 2.0 < 10.0 < simulated[2].arrival_dispersion  # Poisson, clumps


async def test_the_collector_recalls_what_its_cycles_would_have_read_before_its_start(tmp_path):
    """PrometheusCollector.history: each query once as a range query, split into the instant
    answers at each step, reads at every period before `at` what a cycle would have read
    then (the instant queries at that time), oldest first, `at` itself left to the cycle."""
    streams = [stream("sim", "chat", 8.0, 14.0, seed=1), clumped("sim", "burst", 3)]
    settings = CollectorSettings(window_s=60, recent_s=30, dispersion_s=5)
    prometheus = PrometheusServer(tmp_path / "prometheus", free_port())
    prometheus.backfill(openmetrics(streams, [float(t) for t in range(int(END) + 1)], BASE)).start("up", 0)
    try:
        collector = PrometheusCollector(prometheus.url, settings)
        recalled = await collector.history(90.0, 30.0, at=BASE + END)
        then = {ago: {n: prometheus.query(q, BASE + END - ago) for n, q in queries(settings).items()} for ago in (90, 60, 30)}
    finally:
        prometheus.stop()
    assert [ago for ago, _ in recalled] == [90.0, 60.0, 30.0]
    for ago, observed in recalled:
        assert observed == observations(then[ago], settings) and len(observed) == 2
    assert recalled[0][1][("sim", "chat")].arrival_rate < 10.0 < recalled[-1][1][("sim", "chat")].arrival_rate  # the step up


def test_a_rise_with_a_queue_does_not_inflate_the_mean_prompt():
    """After a rise the window's prefills outnumber its completions (each request decodes for
    30 s): prompt tokens counted at prefill over the completions would read the mean prompt 1.6
    times too long. The shape is the finished requests' own (vLLM's request_prompt_tokens and
    request_generation_tokens, observed at finish), the same requests in sum and count; the
    prefill counter still gives the prompt work done (identification's rate)."""
    rng = np.random.default_rng(3)
    arrival = np.concatenate([np.arange(0.0, 150.0, 0.5), np.arange(150.0, 200.0, 1 / 6)])  # 2/s, then 6/s
    n = len(arrival)
    first = arrival + 0.2
    finish = first + 30.0
    prompts, outputs = rng.integers(200, 2000, n), rng.integers(100, 300, n)
    rise = RequestStream("sim", "chat", "m", arrival, arrival, first, finish, np.full(n, math.inf), prompts, outputs)
    records, reveal = records_at([rise])
    observer = Observer(records, 1, window_s=60.0)
    for tick in np.arange(5.0, 201.0, 5.0):
        reveal(tick)
        obs = observer.observe(tick)[0]

    finished = (finish > 140.0) & (finish <= 200.0)
    prefilled = (first > 140.0) & (first <= 200.0)
    assert prefilled.sum() > 1.5 * finished.sum()  # the queue of the rise: a counter over completions reads 1.6x
    assert obs.avg_in_tokens == pytest.approx(prompts[finished].mean())
    assert obs.avg_out_tokens == pytest.approx(outputs[finished].mean())
    assert obs.prompt_tokens_per_s == pytest.approx(prompts[prefilled].sum() / 60.0)


def test_the_simulator_and_the_controller_run_one_planner():
    assert model_based.plan is controller.plan  # the very function, not a copy
    sizing = {"solve", "per_replica_capacity", "learn", "planned_rate", "wants_new_revision", "estimate_load"}
    simulator = Path(autoscaler.__file__).parent / "simulator"
    for path in simulator.rglob("*.py"):
        names = {
            alias.asname or alias.name
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        if path.name != "load_test.py":  # the baselines' load test sizes nothing for ours
            assert not names & sizing, f"{path.name} imports {names & sizing}: sizing belongs to policy.planner"


def test_ours_applies_the_plan_as_the_controller_would(monkeypatch):
    """Whatever plan() returns is what the simulator does: a roll-out is a new revision at once,
    a replica count goes through the HPA at its own syncs (up within its limits, down only after
    its stabilisation window), `hpa_phase_s` past each multiple of its period."""
    scenario = build_scenario("steady", duration_s=600.0, seed=1)
    policy = ModelBasedPolicy(scenario.world, _loads(scenario, 0.0, 60.0))
    records, _ = records_at([stream("simulation", spec.name, 1.0, 1.0, seed=i) for i, spec in enumerate(scenario.world.isvcs)])
    policy.attach(records)
    wanted: dict[str, tuple[int, bool]] = {}
    seen = []

    def fake_plan(catalog, capacity, services, observed, now, state, settings, free=None):
        seen.append({s.name: s.last for s in services})
        return [
            Plan(s, LastDecision("H100", wanted[s.name][0], 64, 1.0, 1.0, 1.0, 1.0, now), roll_out=wanted[s.name][1])
            for s in services
        ]

    monkeypatch.setattr(model_based, "plan", fake_plan)
    names = [spec.name for spec in scenario.world.isvcs]
    views = [IsvcView(n, "H100", 64, 4, 4, 0, None) for n in names]
    wanted.update({n: (9, False) for n in names} | {names[0]: (3, True)})
    assert policy.settings.hpa_phase_s == 8.0 and policy.settings.hpa.sync_period_s == 15.0
    assert policy.decide(30.0, views) == {0: Decision(3, "H100", 64)}  # a roll-out: a new revision at the planned count
    assert policy.sync(37.0, lambda: views) == {}  # a count waits for the HPA's sync
    assert policy.sync(38.0, lambda: views)[1] == Decision(8)  # a scale-up at its sync: at most x2 or +4 a sync
    at = lambda n: [dataclasses.replace(v, replicas=n, ready=n) for v in views]  # noqa: E731
    assert policy.sync(53.0, lambda: at(8))[1] == Decision(9)
    wanted.update({n: (2, False) for n in names})
    policy.decide(60.0, at(9))
    assert policy.sync(68.0, lambda: at(9))[1] == Decision(9)  # a scale-down waits for the HPA's window
    assert policy.sync(338.0, lambda: at(9))[1] == Decision(9)  # the 9 asked for at 53 s still counts
    assert policy.sync(398.0, lambda: at(9))[1] == Decision(2)
    assert seen[1][names[1]].replicas == 9  # the next cycle reads the decision the annotation records


def test_the_opening_decision_sees_the_first_minutes_clumps_as_its_probes_would():
    """The opening observation is the first minute's: its rate, and the Allan factor of its
    arrivals over the queue probes' 5 s (chat-8b's first minute of the Azure code trace: 35,
    beyond Poisson noise); with no arrival times given, Poisson as before."""
    counts = [12, 51, 0, 0, 0, 0, 0, 0, 0, 161, 92, 278]
    arrivals = np.concatenate([5.0 * i + np.linspace(0.0, 4.9, n) for i, n in enumerate(counts)])
    load = Load(len(arrivals), 2048, 28)
    opened = model_based._watched(load, 60.0, arrivals, 5.0)
    assert opened.arrival_rate == pytest.approx(len(arrivals) / 60.0)
    assert (opened.arrival_dispersion, opened.dispersion_pairs, opened.dispersion_s) == (pytest.approx(35.16, abs=0.01), 10, 5.0)
    assert rate_variation(opened) > 0.1
    assert model_based._watched(load, 60.0).arrival_dispersion is None


def test_the_simulator_observes_at_the_scrape_interval_the_controller_ships_with():
    """The simulator's ours probes vLLM's figures every `probe_s` (its Allan factor's intervals,
    its queue watch); the controller reads them at the scrape interval the sample PodMonitor sets
    and `--scrape-interval` states, and watches the queue every `--queue-probe`. They are one
    figure: evaluated at 5 s and deployed at 15 s, ours meets 10-12 points fewer of azure-code's
    requests than the simulator reports (README, *The scrape interval*)."""
    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    collected, controlled = server.settings(parser.parse_args([]))
    podmonitor = yaml.safe_load((Path(autoscaler.__file__).parents[1] / "config/samples/podmonitor.yaml").read_text())
    [endpoint] = podmonitor["spec"]["podMetricsEndpoints"]
    simulated = model_based.ModelBasedSettings().probe_s
    assert endpoint["interval"] == f"{simulated:g}s"
    assert collected.dispersion_s == controlled.probe_s == CollectorSettings().dispersion_s == simulated
