"""The External Metrics API over real HTTPS, with real certificates made for each test.

Delegated authentication and authorisation go to tests/kube_api_emulator.py, a Kubernetes API
emulator (no kube-apiserver can run here) that answers TokenReview, SubjectAccessReview and the
extension-apiserver-authentication ConfigMap with the real payload shapes.
"""

import asyncio
import json
import ssl

import aiohttp
import pytest
from aiohttp import web
from kubernetes_asyncio import client as kube

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

    async def start(self):
        self.api_runner, api_port = await serve(self.emulator.app())
        self.api_client = kube.ApiClient(kube.Configuration(host=f"http://127.0.0.1:{api_port}"))
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
        proxy = self.client_context("front-proxy-client")
        remote = {
            "X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
            "X-Remote-Group": "system:serviceaccounts",
        }
        return await self.get(path, proxy, remote | headers)


@pytest.fixture
async def cluster(tmp_path):
    running = await Cluster(tmp_path).start()
    running.store.upsert(
        Series("desired_replicas", "prod", {"isvc": "chat", "revision": "chat-00002", "accelerator": "H100"}, 7, NOW)
    )
    running.store.upsert(
        Series("desired_replicas", "prod", {"isvc": "code", "revision": "code-00001", "accelerator": "A100"}, 2.5, NOW)
    )
    running.store.upsert(Series("desired_replicas", "dev", {"isvc": "chat", "revision": "chat-00001"}, 1, NOW))
    yield running
    await running.stop()


async def test_discovery_lists_metrics(cluster):
    code, content_type, body = await cluster.as_hpa(BASE)
    assert code == 200 and content_type == "application/json"
    assert body["kind"] == "APIResourceList" and body["groupVersion"] == "external.metrics.k8s.io/v1beta1"
    assert [r["name"] for r in body["resources"]] == ["desired_replicas"]


async def test_values_by_selector_in_json_whatever_accept_says(cluster):
    path = BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc%3Dchat"
    code, content_type, body = await cluster.as_hpa(path, Accept="application/vnd.kubernetes.protobuf, */*")
    assert code == 200 and content_type == "application/json"
    assert body["kind"] == "ExternalMetricValueList" and body["apiVersion"] == "external.metrics.k8s.io/v1beta1"
    assert body["items"] == [
        {
            "metricName": "desired_replicas",
            "metricLabels": {"isvc": "chat", "revision": "chat-00002", "accelerator": "H100"},
            "timestamp": "2027-01-15T08:00:00Z",
            "value": "7",
        }
    ]
    _, _, both = await cluster.as_hpa(BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc+in+(chat,code),!spot")
    assert sorted(i["value"] for i in both["items"]) == ["2500m", "7"]


async def test_malformed_selector_is_a_400_status(cluster):
    code, _, body = await cluster.as_hpa(BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc+in+(chat")
    assert code == 400
    assert body["kind"] == "Status" and body["reason"] == "BadRequest"
    assert body["message"].startswith("invalid labelSelector: unexpected end of selector")


async def test_unknown_metric_is_an_empty_list(cluster):
    code, _, body = await cluster.as_hpa(BASE + "/namespaces/prod/no_such_metric")
    assert code == 200 and body["items"] == [] and body["kind"] == "ExternalMetricValueList"


async def test_stale_values_are_marked_then_withheld(cluster):
    path = BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc%3Dchat"
    cluster.clock[0] = NOW + 61
    _, _, body = await cluster.as_hpa(path)
    assert body["items"][0]["metricLabels"]["stale"] == "true" and body["items"][0]["value"] == "7"
    cluster.clock[0] = NOW + 301
    _, _, body = await cluster.as_hpa(path)
    assert body["items"] == []


async def test_anonymous_is_401(cluster):
    code, _, body = await cluster.get(BASE)
    assert code == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized"


async def test_remote_headers_without_a_trusted_certificate_are_ignored(cluster):
    code, _, _ = await cluster.get(BASE, headers={"X-Remote-User": "system:admin"})
    assert code == 401


async def test_front_proxy_name_not_allowed_is_403(cluster):
    context = cluster.client_context("someone-else")
    code, _, body = await cluster.get(BASE, context, {"X-Remote-User": "system:admin"})
    assert code == 403 and "not an allowed request-header client" in body["message"]


async def test_certificate_from_another_ca_fails_the_handshake(cluster):
    context = cluster.client_context("front-proxy-client", authority=cluster.rogue_ca)
    with pytest.raises(aiohttp.ClientError):
        await cluster.get(BASE, context, {"X-Remote-User": "system:admin"})


async def test_bearer_tokens_are_reviewed_and_access_checked(cluster):
    path = BASE + "/namespaces/prod/desired_replicas"
    code, _, body = await cluster.get(path, headers={"Authorization": "Bearer good-token"})
    assert code == 200 and len(body["items"]) == 2
    code, _, body = await cluster.get(BASE + "/namespaces/dev/desired_replicas", headers={"Authorization": "Bearer good-token"})
    assert code == 403 and body["message"].startswith('alice cannot list resource "desired_replicas"')
    code, _, _ = await cluster.get(path, headers={"Authorization": "Bearer viewer-token"})
    assert code == 403
    code, _, _ = await cluster.get(path, headers={"Authorization": "Bearer forged"})
    assert code == 401


async def test_reviews_are_cached_for_ten_seconds(cluster):
    path = BASE + "/namespaces/prod/desired_replicas"
    for _ in range(3):
        await cluster.get(path, headers={"Authorization": "Bearer good-token"})
    assert cluster.emulator.calls["tokenreviews"] == 1 and cluster.emulator.calls["subjectaccessreviews"] == 1
    cluster.monotonic[0] += 11
    await cluster.get(path, headers={"Authorization": "Bearer good-token"})
    assert cluster.emulator.calls["tokenreviews"] == 2 and cluster.emulator.calls["subjectaccessreviews"] == 2


async def test_review_api_failure_is_a_503_not_a_crash(cluster):
    cluster.emulator.failing = True
    code, _, body = await cluster.get(BASE, headers={"Authorization": "Bearer good-token"})
    assert code == 503 and body["reason"] == "ServiceUnavailable" and "HTTP 500" in body["message"]


async def test_health_needs_no_credentials_and_openapi_is_404(cluster):
    for path in ("/healthz", "/livez", "/readyz"):
        async with aiohttp.ClientSession() as session:
            async with session.get(cluster.url + path, ssl=cluster.client_context()) as response:
                assert response.status == 200
    code, content_type, body = await cluster.get("/openapi/v2")
    assert code == 404 and content_type == "application/json" and body["kind"] == "Status"


async def test_rotated_serving_certificate_is_used_by_new_connections(cluster):
    async def served_serial(context):
        port = int(cluster.url.rsplit(":", 1)[1])
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except ssl.SSLError as exc:
            raise aiohttp.ClientError(str(exc)) from exc
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return hash(der)

    before = await served_serial(cluster.client_context())
    new_ca = Authority.create("rotated-ca")
    cert, key = new_ca.issue("localhost", cluster.dir / "rotated", server=True)
    cluster.cert.write_bytes(cert.read_bytes())
    cluster.key.write_bytes(key.read_bytes())
    assert cluster.tls.reload()
    trusting_new = ssl.create_default_context(cadata=new_ca.pem)
    assert await served_serial(trusting_new) != before
    with pytest.raises(aiohttp.ClientError):  # the old CA no longer vouches for what is served
        await served_serial(cluster.client_context())


async def test_concurrent_requests_share_one_review_when_the_cache_is_cold(cluster):
    path = BASE + "/namespaces/prod/desired_replicas"
    results = await asyncio.gather(*(cluster.get(path, headers={"Authorization": "Bearer good-token"}) for _ in range(20)))
    assert all(code == 200 for code, _, _ in results)
    assert cluster.emulator.calls["tokenreviews"] == 1 and cluster.emulator.calls["subjectaccessreviews"] == 1


async def test_a_failed_review_is_not_cached(cluster):
    cluster.emulator.failing = True
    code, _, _ = await cluster.get(BASE, headers={"Authorization": "Bearer good-token"})
    assert code == 503
    cluster.emulator.failing = False
    code, _, _ = await cluster.get(BASE, headers={"Authorization": "Bearer good-token"})
    assert code == 200
