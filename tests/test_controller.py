"""The controller where the Kubernetes API must fail on purpose, and the collector with a real
Prometheus.

The controller's cycles against the real kube-apiserver are tests/e2e/test_controller_cycles.py
(and tests/e2e/test_controller_rbac.py). What stays here needs a fault the real server cannot be
made to produce on cue: tests/kube_api_emulator.py (with tests/kube_objects.py) serves the same
REST paths, JSON bodies, resourceVersions, patches, status subresources and watches, and injects
409s, 5xx, a 403 on one request, dropped watches and 410 Gone after compaction. `Cluster` is the
emulated cluster the other emulator tests build on. Load comes from a real Prometheus (Debian
package) scraping tests/vllm_emulator.py, or from a stand-in collector where a test needs exact
figures.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from autoscaler.controller.collector import CollectError, CollectorSettings, PrometheusCollector
from autoscaler.policy.observation import within
from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.kube import Kube
from autoscaler.decision_stream import DecisionHub

from .cluster_objects import CONFIGMAPS, HPAS, ISVCS, NAMESPACE, NODES, data_configmap, isvc, node
from .kube_api_emulator import KubeApiEmulator
from .prometheus_server import PrometheusServer
from .test_controller_planning import observed
from .test_metrics_adapter_https import serve
from .vllm_emulator import EmulatedIsvc, VllmEmulator


class StandInCollector:
    """Hands the controller chosen observations, or fails like a Prometheus that is down."""

    def __init__(self, observations=None, past=None):
        self.observations = observations or {}
        self.past = past or []  # (seconds ago, observations), oldest first: what history() recalls
        self.down = False

    async def collect(self, slos_s=None):
        if self.down:
            raise CollectError("Prometheus query failed: ConnectionError: refused")
        return dict(self.observations)

    async def in_system(self):
        if self.down:
            raise CollectError("Prometheus query failed: ConnectionError: refused")
        return {key: obs.running + obs.waiting for key, obs in self.observations.items()}

    async def history(self, span_s, step_s, slos_s=None):
        if self.down:
            raise CollectError("Prometheus query failed: ConnectionError: refused")
        return [(ago, observed) for ago, observed in self.past if ago <= span_s]


class Cluster:
    def __init__(self):
        self.emulator = KubeApiEmulator()
        self.store = self.emulator.store
        self.store.put(CONFIGMAPS, data_configmap())
        for i in range(4):
            self.store.put(NODES, node(f"h100-{i}", "NVIDIA-H100-80GB-HBM3", 8))
            self.store.put(NODES, node(f"l40s-{i}", "NVIDIA-L40S", 8))
        self.runner = None
        self.url = ""

    async def __aenter__(self):
        self.runner, port = await serve(self.emulator.app())
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc):
        self.store.drop_watches()
        await self.runner.cleanup()

    async def controller(self, collector) -> Controller:
        settings = ControllerSettings(namespace=NAMESPACE)
        controller = Controller(Kube.at(self.url), collector, DecisionHub(), settings)
        await controller.start(sync_timeout_s=10)
        return controller

    def isvc(self, name: str) -> dict:
        return self.store.get(ISVCS, "prod", name)

    async def settle(self, controller: Controller, predicate, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, "the controller's caches did not catch up"
            await asyncio.sleep(0.02)


async def stop(controller: Controller) -> None:
    await controller.stop()
    await controller.kube.close()


async def test_conflicts_and_server_errors_are_retried():
    """emulator: the real API server cannot inject a 409, 503 or 500 on the n-th request."""
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        cluster.store.fail("PATCH", "/inferenceservices/chat/status", 409, times=2)
        cluster.store.fail("POST", "/horizontalpodautoscalers", 503, times=2)
        cluster.store.fail("PATCH", "/inferenceservices/chat", 500, times=1)
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            report = await controller.cycle()
            assert not report.failures, report.failures
            assert cluster.store.get(HPAS, "prod", "chat-optimizer") is not None
            assert cluster.isvc("chat")["status"]["conditions"][0]["type"] == "AutoscalerDecision"
            assert cluster.store.calls("POST", "/horizontalpodautoscalers") == 3
        finally:
            await stop(controller)


async def test_a_persistent_api_failure_is_reported_and_other_isvcs_proceed():
    """emulator: the real API server cannot refuse (403) one HPA create of two in one namespace."""
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        cluster.store.put(ISVCS, isvc("code", "llama_7b"))
        cluster.store.fail("POST", "/namespaces/prod/horizontalpodautoscalers", 403, times=1)
        controller = await cluster.controller(
            StandInCollector({("prod", "chat"): observed(8.0), ("prod", "code"): observed(8.0)})
        )
        try:
            report = await controller.cycle()
            assert len(report.failures) == 1 and "403" in report.failures[0]
            assert len(cluster.store.items(HPAS)) == 1
        finally:
            await stop(controller)


async def test_watch_expiry_relists_and_resumes():
    """emulator: the real API server cannot be made to compact on cue (410 Gone), drop watches or
    fail lists with 500."""
    async with Cluster() as cluster:
        controller = await cluster.controller(StandInCollector())
        try:
            informer = controller.informers["isvcs"]
            assert informer.relists == 1
            cluster.store.compact()
            cluster.store.drop_watches()
            cluster.store.put(ISVCS, isvc("late", "llama_7b"))
            await cluster.settle(controller, lambda: ("prod", "late") in informer.objects)
            assert informer.relists == 2
            cluster.store.fail("GET", "/inferenceservices", 500, times=2)
            cluster.store.drop_watches()
            cluster.store.put(ISVCS, isvc("later", "llama_7b"))
            await cluster.settle(controller, lambda: ("prod", "later") in informer.objects, timeout_s=10)
        finally:
            await stop(controller)


@pytest.fixture
async def vllm_and_prometheus(tmp_path):
    emulator = VllmEmulator(
        [
            EmulatedIsvc("prod", "chat", "llama_13b", rate=4.0, in_tokens=700, out_tokens=180),
            EmulatedIsvc("prod", "code", "llama_7b", rate=10.0, in_tokens=2000, out_tokens=30, ttft_s=2.0),
            EmulatedIsvc("batch", "chat", "llama_13b", rate=1.0, waiting=0),
        ]
    )
    runner, port = await serve(emulator.app())
    server = await asyncio.to_thread(PrometheusServer(tmp_path / "prometheus", port).start, "vllm:request_success_total", 3)
    yield emulator, server
    server.stop()
    await runner.cleanup()


async def test_a_vllm_without_the_per_request_tpot_histogram_is_read_on_ttft_and_its_gaps(tmp_path, caplog):
    """vLLM < 0.11 exports TTFT and every gap (vllm:time_per_output_token_seconds, which the
    collector is told with --itl-metric) but no per-request TPOT histogram. Through a real
    Prometheus: the TTFT's buckets bracket the SLO and the mean gap is read, the TPOT's share
    is left empty (the bias then learns from TTFT alone: test_controller_planning), the bucket
    bounds are not asked again every cycle once TTFT's are known, and the missing histogram is
    said once per ISVC."""
    emulator = VllmEmulator(
        [
            EmulatedIsvc("prod", "old", "llama_13b", rate=4.0, in_tokens=700, out_tokens=180, per_request_tpot=False),
            EmulatedIsvc("prod", "older", "llama_7b", rate=2.0, per_request_tpot=False),
        ]
    )
    runner, port = await serve(emulator.app())
    server = await asyncio.to_thread(PrometheusServer(tmp_path / "prometheus", port).start, "vllm:request_success_total", 2)
    try:
        collector = PrometheusCollector(
            server.url, CollectorSettings(window_s=5, itl_metric="vllm:time_per_output_token_seconds")
        )
        asked: list[str] = []
        ask = collector._ask

        async def counted(named):
            asked.extend(named)
            return await ask(named)

        collector._ask = counted
        await asyncio.sleep(6)  # a full window of scrapes
        slos = {"ttft": {1.0}, "tpot": {0.04}}
        with caplog.at_level("WARNING", logger="autoscaler.controller.collector"):
            for _ in range(3):
                observations = await collector.collect(slos)
        old = observations[("prod", "old")]
        assert old.tpot_buckets == () and old.itl_ms == pytest.approx(20, rel=0.01)
        assert [b for b, _ in old.ttft_buckets] == [0.75, 1.0, float("inf")]  # around the 1 s SLO
        assert old.ttft_buckets[-1][1] > 0 and old.itl_gaps == pytest.approx(old.ttft_buckets[-1][1] * 179, rel=0.05)
        assert asked.count("ttft") == asked.count("tpot") == 1  # the bounds: once, not every cycle
        said = [r.getMessage() for r in caplog.records if "request_time_per_output_token_seconds" in r.getMessage()]
        assert sorted(m.split(":")[0] for m in said) == ["prod/old", "prod/older"]
    finally:
        server.stop()
        await runner.cleanup()


async def test_collector_reads_live_vllm_load_from_a_real_prometheus(vllm_and_prometheus):
    emulator, prometheus = vllm_and_prometheus
    collector = PrometheusCollector(prometheus.url, CollectorSettings(window_s=5))
    await asyncio.sleep(6)  # a full window of scrapes
    slos = {"ttft": {1.0, 4.0}, "tpot": {0.04}}
    await collector.collect(slos)
    assert r'le=~"0\\.75|1\\.0|2\\.5|5\\.0|\\+Inf"' in collector.queries["ttft_buckets"]  # around 1 s and 4 s
    growing = emulator.isvcs[2]
    for _ in range(5):  # a queue building by 2 requests/s on top of 1 completion/s
        await asyncio.sleep(1)
        growing.waiting += 2
    observations = await collector.collect(slos)
    chat, code, queued = observations[("prod", "chat")], observations[("prod", "code")], observations[("batch", "chat")]
    assert chat.arrival_rate == pytest.approx(4.0, rel=0.15) and code.arrival_rate == pytest.approx(10.0, rel=0.15)
    assert chat.avg_in_tokens == pytest.approx(700, rel=0.01) and chat.avg_out_tokens == pytest.approx(180, rel=0.01)
    assert code.ttft_ms == pytest.approx(2000, rel=0.01) and chat.itl_ms == pytest.approx(20, rel=0.01)
    assert queued.arrival_rate == pytest.approx(3.0, rel=0.3) and queued.waiting >= 8  # completions alone say 1
    in_system = await collector.in_system()  # the queue watch's probe: running + waiting, one query
    assert in_system.keys() == observations.keys() and in_system[("batch", "chat")] >= queued.waiting
    assert within(chat.ttft_buckets, 1.0)[0] == pytest.approx(within(chat.ttft_buckets, 1.0)[1])  # 0.2 s TTFT: all within 1 s
    assert [b for b, _ in code.ttft_buckets] == [0.75, 1.0, 2.5, 5.0, float("inf")]
    # the ITL SLO's share per request (vLLM's TPOT histogram), the mean gap over every gap (its ITL)
    assert [b for b, _ in chat.tpot_buckets] == [0.025, 0.05, float("inf")]
    assert chat.tpot_buckets[-1][1] == pytest.approx(chat.ttft_buckets[-1][1], rel=1e-6)  # one count per request
    assert chat.itl_gaps == pytest.approx(chat.tpot_buckets[-1][1] * (180 - 1), rel=1e-6)
