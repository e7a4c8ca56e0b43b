"""`--source prometheus` against a real Prometheus server scraping the controller's exposition.

Prometheus is Debian's package, started by the test on loopback. The adapter serving its values
over HTTPS, authenticated by the real kube-apiserver, is in tests/e2e/test_metrics_adapter_https.py
(with this module's `prometheus` fixture).
"""

import asyncio
import time

import pytest
from aiohttp import web

from autoscaler.decision_metrics import exposition
from autoscaler.proto import decisions_pb2 as pb
from metrics_adapter.prometheus_source import PrometheusSource, promql
from metrics_adapter.selectors import parse_selector

from .prometheus_server import PrometheusServer
from .test_metrics_adapter_https import serve

DECISIONS = [
    pb.Decision(namespace="prod", isvc="chat", revision="chat-00002", model="llama-3-8b", accelerator="H100",
                service_class="Premium", desired_replicas=7, arrival_rate=37.5, cost_per_hour=28.0, decided_at=time.time()),
    pb.Decision(namespace="prod", isvc="code", model="llama-3.2-1b", accelerator="H100", service_class="Premium",
                desired_replicas=2, arrival_rate=20.0, cost_per_hour=8.0, decided_at=time.time()),
]  # fmt: skip


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=exposition(DECISIONS), content_type="text/plain")


@pytest.fixture
async def prometheus(tmp_path):
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    exporter, port = await serve(app)
    # wait in a thread: the exporter Prometheus scrapes runs on this event loop
    server = await asyncio.to_thread(
        PrometheusServer(tmp_path / "prometheus", port).start, "inference_autoscaler_desired_replicas", 2
    )
    yield server
    server.stop()
    await exporter.cleanup()


def test_selectors_become_promql_matchers():
    query = promql("desired_replicas", "prod", parse_selector("isvc in (chat,code.v1),!spot,rev!=a,version>2"))
    assert query == 'inference_autoscaler_desired_replicas{namespace="prod",isvc=~"chat|code\\\\.v1",spot="",rev!="a"}'


async def test_prometheus_down_is_a_503(tmp_path, prometheus):
    source = PrometheusSource(prometheus.url)
    prometheus.stop()
    from metrics_adapter.api import SourceUnavailable

    with pytest.raises(SourceUnavailable, match=prometheus.url):
        await source.items("prod", "desired_replicas", parse_selector(""))
