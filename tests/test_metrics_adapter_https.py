"""The External Metrics API's delegated reviews where the API server must be counted or fail.

The API itself over real HTTPS (discovery, values, selectors, staleness, the front-proxy
certificate and its allowed names, bearer tokens, health, certificate rotation) runs against the
real kube-apiserver in tests/e2e/test_metrics_adapter_https.py, through the same `Cluster` with
`api()` pointed there. Here `Cluster` delegates to tests/kube_api_emulator.py, which answers
TokenReview, SubjectAccessReview and the extension-apiserver-authentication ConfigMap with the
real payload shapes, and counts and fails them on demand.
"""

import asyncio
import json
import ssl

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client as kube
from multidict import CIMultiDict

from metrics_adapter.api import BASE, build_app
from metrics_adapter.auth import Gatekeeper, KubernetesReviews
from metrics_adapter.store import MetricStore, Series
from metrics_adapter.server import LIMITS
from autoscaler.https_server import serve_https
from autoscaler.tls import ReloadingTLS

from .certs import Authority
from .kube_api_emulator import Grant, KubeApiEmulator

NOW = 1_800_000_000.0


async def serve(app: web.Application, ssl_context=None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]


class Cluster:
    """An adapter on HTTPS plus the API emulator it delegates to, and clients to call it."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.serving_ca = Authority.create("serving-ca")
        self.front_proxy_ca = Authority.create("front-proxy-ca")
        self.rogue_ca = Authority.create("rogue-ca")
        self.cert, self.key = self.serving_ca.issue("localhost", tmp_path, server=True)
        self.api_runner = None
        self.clock = [NOW]
        self.monotonic = [0.0]
        self.store = MetricStore(stale_after_s=60, max_age_s=300, clock=lambda: self.clock[0])
        self.emulator = KubeApiEmulator(
            tokens={"good-token": {"username": "alice", "groups": ["devs"]}, "viewer-token": {"username": "bob"}},
            grants=[Grant("system:serviceaccount:kube-system:horizontal-pod-autoscaler"), Grant("alice", namespace="prod")],
            configmap={
                "requestheader-client-ca-file": self.front_proxy_ca.pem,
                "requestheader-allowed-names": json.dumps(["front-proxy-client"]),
                "requestheader-username-headers": json.dumps(["X-Remote-User"]),
                "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
                "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"]),
            },
        )

    async def api(self) -> kube.ApiClient:
        """A client of the API server the adapter delegates to: here the emulator."""
        self.api_runner, api_port = await serve(self.emulator.app())
        return kube.ApiClient(kube.Configuration(host=f"http://127.0.0.1:{api_port}"))

    async def start(self):
        self.api_client = await self.api()
        reviews = KubernetesReviews(self.api_client)
        requestheader = await reviews.requestheader_config()
        self.tls = ReloadingTLS(self.cert, self.key, requestheader.client_ca_pem)
        self.gate = Gatekeeper(requestheader, reviews, clock=lambda: self.monotonic[0])
        app = build_app(self.store, self.gate.authorize)
        self.runner, site = await serve_https(app, "127.0.0.1", 0, self.tls.front, LIMITS)
        self.url = f"https://127.0.0.1:{site.bound_port}"
        return self

    async def stop(self):
        await self.runner.cleanup()
        if self.api_runner is not None:
            await self.api_runner.cleanup()
        await self.api_client.close()

    def client_context(self, cert_cn: str | None = None, authority: Authority | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.serving_ca.pem)
        if cert_cn:
            cert, key = (authority or self.front_proxy_ca).issue(cert_cn, self.dir / "clients")
            context.load_cert_chain(cert, key)
        return context

    async def get(self, path: str, context=None, headers=None) -> tuple[int, str, dict]:
        async with aiohttp.ClientSession() as session:
            async with session.get(self.url + path, ssl=context or self.client_context(), headers=headers or {}) as response:
                return response.status, response.headers.get("Content-Type", ""), await response.json(content_type=None)

    async def as_hpa(self, path: str, **headers):
        """As the kube-aggregator proxies the HPA controller: its front-proxy certificate, the user,
        and one X-Remote-Group header for each group the API server authenticated it with."""
        proxy = self.client_context("front-proxy-client")
        remote = CIMultiDict([("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")])
        for group in ("system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"):
            remote.add("X-Remote-Group", group)
        remote.update(headers)
        return await self.get(path, proxy, remote)


async def seeded(cluster: Cluster) -> Cluster:
    """`cluster` started, with values for two ISVCs in prod and one in dev."""
    running = await cluster.start()
    running.store.upsert(
        Series("desired_replicas", "prod", {"isvc": "chat", "revision": "chat-00002", "accelerator": "H100"}, 7, NOW)
    )
    running.store.upsert(
        Series("desired_replicas", "prod", {"isvc": "code", "revision": "code-00001", "accelerator": "A100"}, 2.5, NOW)
    )
    running.store.upsert(Series("desired_replicas", "dev", {"isvc": "chat", "revision": "chat-00001"}, 1, NOW))
    return running


@pytest.fixture
async def cluster(tmp_path):
    running = await seeded(Cluster(tmp_path))
    yield running
    await running.stop()


async def test_reviews_are_cached_for_ten_seconds(cluster):
    """emulator: the real API server does not count the reviews it answers."""
    path = BASE + "/namespaces/prod/desired_replicas"
    for _ in range(3):
        await cluster.get(path, headers={"Authorization": "Bearer good-token"})
    assert cluster.emulator.calls["tokenreviews"] == 1 and cluster.emulator.calls["subjectaccessreviews"] == 1
    cluster.monotonic[0] += 11
    await cluster.get(path, headers={"Authorization": "Bearer good-token"})
    assert cluster.emulator.calls["tokenreviews"] == 2 and cluster.emulator.calls["subjectaccessreviews"] == 2


async def test_review_api_failure_is_a_503_not_a_crash(cluster):
    """emulator: the real API server cannot be made to answer 500 to reviews."""
    cluster.emulator.failing = True
    code, _, body = await cluster.get(BASE, headers={"Authorization": "Bearer good-token"})
    assert code == 503 and body["reason"] == "ServiceUnavailable" and "HTTP 500" in body["message"]


async def test_concurrent_requests_share_one_review_when_the_cache_is_cold(cluster):
    """emulator: the real API server does not count the reviews it answers."""
    path = BASE + "/namespaces/prod/desired_replicas"
    results = await asyncio.gather(*(cluster.get(path, headers={"Authorization": "Bearer good-token"}) for _ in range(20)))
    assert all(code == 200 for code, _, _ in results)
    assert cluster.emulator.calls["tokenreviews"] == 1 and cluster.emulator.calls["subjectaccessreviews"] == 1


async def test_a_failed_review_is_not_cached(cluster):
    """emulator: the real API server cannot be made to fail reviews, then answer again."""
    cluster.emulator.failing = True
    code, _, _ = await cluster.get(BASE, headers={"Authorization": "Bearer good-token"})
    assert code == 503
    cluster.emulator.failing = False
    code, _, _ = await cluster.get(BASE, headers={"Authorization": "Bearer good-token"})
    assert code == 200
