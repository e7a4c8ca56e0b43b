"""The External Metrics API over real HTTPS, delegating authentication and authorisation to the
real kube-apiserver as config/'s metrics-adapter ServiceAccount: the request-header (front-proxy)
CA and allowed names from its kube-system/extension-apiserver-authentication ConfigMap, callers'
certificates signed by the control plane's own front-proxy CA, TokenReviews and
SubjectAccessReviews answered under config/'s RBAC; its HTTP bounds; `--source prometheus` with a
real Prometheus (moved here from tests/test_metrics_adapter_https.py, which keeps what needs the
reviews counted or failing, test_metrics_adapter_bounds.py and test_prometheus_source.py).
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
from kubernetes_asyncio import client as kube
from kubernetes_asyncio import config

from metrics_adapter.api import BASE, MAX_SELECTOR_CHARS, build_app
from metrics_adapter.prometheus_source import PrometheusSource

from ..certs import Authority
from ..control_plane import _client_cert
from ..test_metrics_adapter_https import NOW, Cluster, seeded, serve
from ..test_prometheus_source import prometheus  # noqa: F401 - the fixture
from .conftest import NAMESPACE
from .isvc_namespace import named


class FrontProxyCa:
    """The control plane's front-proxy CA, issuing client certificates as tests/certs.Authority does."""

    def __init__(self, plane):
        self.ca = plane.pki.front_proxy_ca

    def issue(self, cn: str, directory):
        directory.mkdir(parents=True, exist_ok=True)
        return _client_cert(self.ca, cn, (), directory)


class RealCluster(Cluster):
    def __init__(self, tmp_path, plane):
        super().__init__(tmp_path)
        self.plane = plane
        self.front_proxy_ca = FrontProxyCa(plane)

    async def api(self) -> kube.ApiClient:
        configuration = kube.Configuration()
        kubeconfig = self.plane.service_account_kubeconfig(NAMESPACE, "metrics-adapter")
        await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        return kube.ApiClient(configuration)


@pytest.fixture
async def cluster(deployed, tmp_path):
    running = await seeded(RealCluster(tmp_path, deployed))
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


async def test_an_absurd_selector_is_a_400_status(cluster):
    selector = ",".join(f"k{i}=v" for i in range(MAX_SELECTOR_CHARS // 5 + 1))
    code, _, body = await cluster.as_hpa(BASE + f"/namespaces/prod/desired_replicas?labelSelector={selector}")
    assert code == 400 and body["kind"] == "Status" and f"longer than {MAX_SELECTOR_CHARS}" in body["message"]


async def test_a_request_line_past_aiohttps_limit_is_a_400_not_a_crash(cluster, caplog):
    async with aiohttp.ClientSession() as session:
        url = cluster.url + BASE + "/namespaces/prod/desired_replicas?labelSelector=" + "a" * 20_000
        async with session.get(url, ssl=cluster.client_context()) as response:
            assert response.status in (400, 414)
    assert not [r for r in caplog.records if r.exc_info]  # the peer's bad input: one line, no traceback


@pytest.mark.parametrize("headers", [{"X-Big": "a" * 10_000}, {f"X-H{i}": "v" for i in range(150)}])
async def test_oversized_headers_are_a_400(cluster, headers, caplog):
    async with aiohttp.ClientSession() as session:
        async with session.get(cluster.url + "/healthz", ssl=cluster.client_context(), headers=headers) as response:
            assert response.status in (400, 431)
    assert not [r for r in caplog.records if r.exc_info]


async def test_adapter_serves_prometheus_values_over_https(cluster, prometheus):  # noqa: F811
    """`--source prometheus`: the same adapter, its values from a real Prometheus scraping the
    controller's exposition (moved here from tests/test_prometheus_source.py)."""
    await cluster.runner.cleanup()
    app = build_app(PrometheusSource(prometheus.url), cluster.gate.authorize)
    cluster.runner, port = await serve(app, cluster.tls.front)
    cluster.url = f"https://127.0.0.1:{port}"

    code, content_type, body = await cluster.as_hpa(BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc%3Dchat")
    assert code == 200 and content_type == "application/json"
    assert [(i["metricLabels"]["revision"], i["value"]) for i in body["items"]] == [("chat-00002", "7")]
    _, _, rates = await cluster.as_hpa(BASE + "/namespaces/prod/arrival_rate?labelSelector=isvc+in+(chat,code)")
    assert sorted(i["value"] for i in rates["items"]) == ["20", "37500m"]
    _, _, none = await cluster.as_hpa(BASE + "/namespaces/dev/desired_replicas")
    assert none["items"] == []
    code, _, body = await cluster.as_hpa(BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc%3D")
    assert code == 200 and body["items"] == []


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


@named("prod")  # where the values of `seeded` are
async def test_bearer_tokens_are_reviewed_and_access_checked(cluster, namespace):
    """alice may list external metrics in prod (a RoleBinding there), bob nowhere."""
    plane = namespace.plane
    for account in ("alice", "bob"):
        plane.kubectl("create", "serviceaccount", account, "--namespace=prod")
    plane.kubectl(
        "create", "rolebinding", "alice-metrics", "--namespace=prod",
        "--clusterrole=inference-autoscaler-external-metrics-reader", "--serviceaccount=prod:alice",
    )  # fmt: skip
    alice = {"Authorization": f"Bearer {plane.service_account_token('prod', 'alice')}"}
    bob = {"Authorization": f"Bearer {plane.service_account_token('prod', 'bob')}"}
    path = BASE + "/namespaces/prod/desired_replicas"
    code, _, body = await cluster.get(path, headers=alice)
    assert code == 200 and len(body["items"]) == 2
    code, _, body = await cluster.get(BASE + "/namespaces/dev/desired_replicas", headers=alice)
    assert code == 403 and body["message"].startswith('system:serviceaccount:prod:alice cannot list resource "desired_replicas"')
    code, _, _ = await cluster.get(path, headers=bob)
    assert code == 403
    code, _, _ = await cluster.get(path, headers={"Authorization": "Bearer forged"})
    assert code == 401
