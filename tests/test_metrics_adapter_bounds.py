"""The metrics adapter's HTTP bounds and its request-header CA followed after start."""

import asyncio
import json

import aiohttp
import pytest

from metrics_adapter.api import BASE, MAX_SELECTOR_CHARS, build_app
from metrics_adapter.auth import Gatekeeper, KubernetesReviews, RequestHeaderConfig
from metrics_adapter.server import LIMITS, follow_requestheader
from autoscaler.https_server import serve_https
from autoscaler.tls import ReloadingTLS

from kubernetes_asyncio import client as kube

from .test_metrics_adapter_https import Cluster, cluster, serve  # noqa: F401 - the fixture


async def test_an_absurd_selector_is_a_400_status(cluster):  # noqa: F811
    selector = ",".join(f"k{i}=v" for i in range(MAX_SELECTOR_CHARS // 5 + 1))
    code, _, body = await cluster.as_hpa(BASE + f"/namespaces/prod/desired_replicas?labelSelector={selector}")
    assert code == 400 and body["kind"] == "Status" and f"longer than {MAX_SELECTOR_CHARS}" in body["message"]


async def test_a_request_line_past_aiohttps_limit_is_a_400_not_a_crash(cluster, caplog):  # noqa: F811
    async with aiohttp.ClientSession() as session:
        url = cluster.url + BASE + "/namespaces/prod/desired_replicas?labelSelector=" + "a" * 20_000
        async with session.get(url, ssl=cluster.client_context()) as response:
            assert response.status in (400, 414)
    assert not [r for r in caplog.records if r.exc_info]  # the peer's bad input: one line, no traceback


@pytest.mark.parametrize("headers", [{"X-Big": "a" * 10_000}, {f"X-H{i}": "v" for i in range(150)}])
async def test_oversized_headers_are_a_400(cluster, headers, caplog):  # noqa: F811
    async with aiohttp.ClientSession() as session:
        async with session.get(cluster.url + "/healthz", ssl=cluster.client_context(), headers=headers) as response:
            assert response.status in (400, 431)
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_request_header_ca_published_after_start_is_followed(tmp_path):
    cluster = Cluster(tmp_path)  # noqa: F811 - not the fixture: this one starts without a CA
    ca = cluster.emulator.configmap.pop("requestheader-client-ca-file")
    api_runner, api_port = await serve(cluster.emulator.app())
    api_client = kube.ApiClient(kube.Configuration(host=f"http://127.0.0.1:{api_port}"))
    reviews = KubernetesReviews(api_client)
    requestheader = await reviews.requestheader_config()
    assert requestheader.client_ca_pem == ""
    tls = ReloadingTLS(cluster.cert, cluster.key, requestheader.client_ca_pem, ask_client_certificate=True)
    gate = Gatekeeper(requestheader, reviews)
    runner, site = await serve_https(build_app(cluster.store, gate.authorize), "127.0.0.1", 0, tls.front, LIMITS)
    cluster.url = f"https://127.0.0.1:{site.bound_port}"
    follower = asyncio.create_task(follow_requestheader(reviews, gate, tls, every_s=0.05))
    try:
        try:
            code, _, _ = await cluster.as_hpa(BASE)
        except aiohttp.ClientError:
            code = 0  # no CA yet: the proxy's certificate cannot be verified
        assert code != 200
        cluster.emulator.configmap["requestheader-client-ca-file"] = ca
        for _ in range(100):
            await asyncio.sleep(0.05)
            if gate.requestheader.client_ca_pem:
                break
        code, _, body = await cluster.as_hpa(BASE)
        assert code == 200 and body["kind"] == "APIResourceList"
        rotated = Cluster(tmp_path / "rotated").front_proxy_ca  # a new CA replaces the old one
        cluster.emulator.configmap["requestheader-client-ca-file"] = rotated.pem
        for _ in range(100):
            await asyncio.sleep(0.05)
            if gate.requestheader.client_ca_pem == rotated.pem:
                break
        with pytest.raises(aiohttp.ClientError):
            await cluster.as_hpa(BASE)  # signed by the retired CA: refused in the handshake
        proxy = cluster.client_context("front-proxy-client", authority=rotated)
        code, _, _ = await cluster.get(
            BASE, proxy, {"X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler"}
        )
        assert code == 200
    finally:
        follower.cancel()
        await runner.cleanup()
        await api_runner.cleanup()
        await api_client.close()


def test_requestheader_config_keeps_defaults_for_missing_keys():
    assert RequestHeaderConfig.from_configmap({"requestheader-allowed-names": json.dumps([])}).username_headers == (
        "X-Remote-User",
    )
