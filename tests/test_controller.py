"""The controller against a Kubernetes API emulator and a real Prometheus.

No kube-apiserver can be installed on these machines, so the cluster is tests/kube_api_emulator.py
(with tests/kube_objects.py): the real REST paths, JSON bodies, resourceVersions, 409s, merge and
JSON patches, status subresources and watches (with 410 Gone after compaction) that the
controller's kubernetes_asyncio client talks to over HTTP. KServe, Knative and the kubelet are
played by the test writing their objects into the store. Load comes from a real Prometheus
(Debian package) scraping tests/vllm_emulator.py, or from a stand-in collector where a test needs
exact figures.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.controller.collector import CollectError, CollectorSettings, PrometheusCollector
from autoscaler.policy.observation import within
from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.kube import Kube
from autoscaler.controller.server import build_app
from autoscaler.decision_stream import DecisionHub
from autoscaler.kube_auth import KubernetesReviews, PathGate

from .cluster_objects import CONFIGMAPS, HPAS, ISVCS, NAMESPACE, NODES, PAS, SKSS, data_configmap, isvc, node, stored_decision
from .cluster_objects import pod_autoscaler
from .kube_api_emulator import Grant, KubeApiEmulator
from .prometheus_server import PrometheusServer, free_port
from .test_controller_planning import observed
from .test_metrics_adapter_https import serve
from .vllm_emulator import EmulatedIsvc, VllmEmulator


class StandInCollector:
    """Hands the controller chosen observations, or fails like a Prometheus that is down."""

    def __init__(self, observations=None):
        self.observations = observations or {}
        self.down = False

    async def collect(self, slos_s=None):
        if self.down:
            raise CollectError("Prometheus query failed: ConnectionError: refused")
        return dict(self.observations)

    async def in_system(self):
        if self.down:
            raise CollectError("Prometheus query failed: ConnectionError: refused")
        return {key: obs.running + obs.waiting for key, obs in self.observations.items()}


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


def decision_of(cluster: Cluster, name: str) -> dict:
    return stored_decision(cluster.store, cluster.isvc(name))


async def test_raw_deployment_isvc_gets_decision_hpa_condition_and_stream():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        collector = StandInCollector({("prod", "chat"): observed(8.0)})
        controller = await cluster.controller(collector)
        try:
            report = await controller.cycle()
            assert not report.error and not report.failures and report.services == 1
            hpa = cluster.store.get(HPAS, "prod", "chat-optimizer")
            assert hpa["spec"]["scaleTargetRef"]["name"] == "chat-predictor"
            assert hpa["spec"]["metrics"][0]["external"]["metric"]["selector"] == {"matchLabels": {"isvc": "chat"}}
            decision = decision_of(cluster, "chat")
            assert decision["replicas"] >= 1 and decision["arrival_rate"] == 8.0
            condition = cluster.isvc("chat")["status"]["conditions"][0]
            assert condition["type"] == "AutoscalerDecision" and condition["status"] == "True"
            assert f"{decision['replicas']} x {decision['accelerator']}" in condition["message"]
            [published] = controller.hub.current()
            assert (published.isvc, published.desired_replicas, published.revision) == ("chat", decision["replicas"], "")

            await cluster.settle(
                controller,
                lambda: controller.decisions.read(cluster.isvc("chat")["metadata"]["uid"]) is not None,
            )
            await cluster.settle(controller, lambda: ("prod", "chat-optimizer") in controller.informers["hpas"].objects)
            steady = await controller.cycle()
            assert steady.writes == 0  # nothing changed: nothing written
        finally:
            await stop(controller)


async def test_knative_revisions_get_hpas_serverless_services_and_status():
    async with Cluster() as cluster:
        obj = isvc("chat", "llama_13b", raw=False)
        obj["status"] = {
            "components": {
                "predictor": {"latestCreatedRevision": "chat-predictor-00003", "latestReadyRevision": "chat-predictor-00002"}
            }
        }
        cluster.store.put(ISVCS, obj)
        for revision in ("chat-predictor-00001", "chat-predictor-00002", "chat-predictor-00003"):
            pa = pod_autoscaler("chat", revision)
            pa["spec"]["reachability"] = "Unreachable" if revision.endswith("1") else "Reachable"  # routes' targets
            cluster.store.put(PAS, pa)
            cluster.store.put(
                "apis/apps/v1/deployments",
                {"metadata": {"name": f"{revision}-deployment", "namespace": "prod"}, "spec": {"replicas": 2}},
            )
        cluster.store.put(
            HPAS,
            {
                "metadata": {
                    "name": "chat-predictor-00001",
                    "namespace": "prod",
                    "labels": {"app.kubernetes.io/managed-by": "inference-autoscaler"},
                },
                "spec": {},
            },
        )
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            report = await controller.cycle()
            assert not report.failures, report.failures
            replicas = decision_of(cluster, "chat")["replicas"]
            for serving in ("chat-predictor-00002", "chat-predictor-00003"):
                hpa = cluster.store.get(HPAS, "prod", serving)
                assert hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"] == {
                    "isvc": "chat",
                    "revision": serving,
                }
                assert hpa["spec"]["scaleTargetRef"]["name"] == f"{serving}-deployment"
                assert cluster.store.get(SKSS, "prod", serving)["spec"]["mode"] == "Serve"
                assert cluster.store.get(PAS, "prod", serving)["status"]["desiredScale"] == replicas
            retired = cluster.store.get(PAS, "prod", "chat-predictor-00001")["status"]
            assert retired["desiredScale"] == 0 and cluster.store.get(HPAS, "prod", "chat-predictor-00001") is None
            assert (
                cluster.store.get("apis/apps/v1/deployments", "prod", "chat-predictor-00001-deployment")["spec"]["replicas"] == 0
            )
            assert sorted(d.revision for d in controller.hub.current()) == ["chat-predictor-00002", "chat-predictor-00003"]
        finally:
            await stop(controller)


async def test_prometheus_down_keeps_last_decisions_stale_and_never_scales_down():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        collector = StandInCollector({("prod", "chat"): observed(20.0)})
        controller = await cluster.controller(collector)
        try:
            await controller.cycle()
            before = decision_of(cluster, "chat")
            down = PrometheusCollector(f"http://127.0.0.1:{free_port()}", timeout_s=2)  # a real client, nothing listening
            controller.collector = down
            report = await controller.cycle()
            assert "Prometheus query failed" in report.error and report.stale == 1
            assert decision_of(cluster, "chat") == before  # nothing rewritten
            [published] = controller.hub.current()
            assert published.desired_replicas == before["replicas"] and published.decided_at == before["decided_at"]
            await cluster.settle(controller, lambda: "status" in controller.informers["isvcs"].objects[("prod", "chat")])
            await cluster.settle(
                controller,
                lambda: controller.informers["isvcs"].objects[("prod", "chat")]["status"]["conditions"][0]["status"] == "Unknown",
            )
        finally:
            await stop(controller)


async def test_partial_data_marks_only_the_missing_isvc_stale():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        cluster.store.put(ISVCS, isvc("code", "llama_7b"))
        collector = StandInCollector({("prod", "chat"): observed(20.0), ("prod", "code"): observed(20.0)})
        controller = await cluster.controller(collector)
        try:
            await controller.cycle()
            code_before = decision_of(cluster, "code")
            collector.observations = {("prod", "chat"): observed(1.0)}
            report = await controller.cycle()
            assert report.stale == 1 and decision_of(cluster, "code") == code_before
            assert decision_of(cluster, "chat")["arrival_rate"] == 1.0
        finally:
            await stop(controller)


async def test_conflicts_and_server_errors_are_retried():
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


async def test_restart_rebuilds_from_the_cluster():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        collector = StandInCollector({("prod", "chat"): observed(12.0, ttft_s=3.0)})
        first = await cluster.controller(collector)
        await first.cycle()
        await stop(first)
        decided = decision_of(cluster, "chat")
        # the learned bias travels in the annotation (resumed: test_controller_planning)
        assert decided["replicas"] >= 1 and decided["ttft_scale"] == decided["itl_scale"]

        collector.down = True
        second = await cluster.controller(collector)
        try:
            report = await second.cycle()
            [published] = second.hub.current()
            assert report.stale == 1 and published.desired_replicas == decided["replicas"]
            assert cluster.store.get(HPAS, "prod", "chat-optimizer") is not None
        finally:
            await stop(second)


async def test_bad_data_configmap_edit_keeps_the_last_good_data():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        try:
            await controller.cycle()
            broken = data_configmap()
            broken["data"]["serviceclass-data.json"] = "{not json"
            cluster.store.put(CONFIGMAPS, broken)
            await cluster.settle(controller, lambda: "not json" in str(controller.informers["data"].objects))
            report = await controller.cycle()
            assert not report.error and report.services == 1
            assert "serviceclass-data.json" in controller.data_error and "keeping the last good data" in controller.data_error
        finally:
            await stop(controller)


async def test_invoke_and_metrics_endpoints():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        cluster.emulator.tokens["ops-token"] = {"username": "ops"}
        cluster.emulator.grants.append(Grant("ops"))
        gate = PathGate(KubernetesReviews(controller.kube.api))
        client = TestClient(TestServer(build_app(controller, controller.hub, gate.authorize, 15.0)))
        await client.start_server()
        ops = {"Authorization": "Bearer ops-token"}
        try:
            assert (await client.get("/readyz")).status == 503
            response = await client.post("/invoke", headers=ops)
            body = await response.json()
            assert response.status == 200 and body["services"] == 1 and set(body) >= {"collect_s", "optimize_s", "actuate_s"}
            text = await (await client.get("/metrics", headers=ops)).text()
            assert 'inference_autoscaler_desired_replicas{namespace="prod",isvc="chat"' in text
            assert 'inference_autoscaler_cycle_phase_seconds{phase="optimize"}' in text
            assert "inference_autoscaler_cycles_total 1" in text
            assert (await client.get("/readyz")).status == 200
        finally:
            await client.close()
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


async def test_collector_reads_live_vllm_load_from_a_real_prometheus(vllm_and_prometheus):
    emulator, prometheus = vllm_and_prometheus
    collector = PrometheusCollector(prometheus.url, CollectorSettings(window_s=5))
    await asyncio.sleep(6)  # a full window of scrapes
    slos = {"ttft": {1.0, 4.0}, "itl": {0.04}}
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


async def test_controller_cycle_with_real_prometheus_load(vllm_and_prometheus):
    emulator, prometheus = vllm_and_prometheus
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        cluster.store.put(ISVCS, isvc("code", "llama_7b", service_class="Bronze"))
        await asyncio.sleep(6)
        controller = await cluster.controller(PrometheusCollector(prometheus.url, CollectorSettings(window_s=5)))
        try:
            report = await controller.cycle()
            assert not report.error and report.stale == 0 and report.services == 2
            rates = {d.isvc: d.arrival_rate for d in controller.hub.current()}
            assert rates["chat"] == pytest.approx(4.0, rel=0.15) and rates["code"] == pytest.approx(10.0, rel=0.15)
        finally:
            await stop(controller)
