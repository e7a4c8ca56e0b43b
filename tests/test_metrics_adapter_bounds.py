"""The metrics adapter's request-header CA followed after start. Its HTTP bounds (an absurd
selector, an oversized request line or headers) run against the real kube-apiserver in
tests/e2e/test_metrics_adapter_https.py."""

import asyncio
import json

import aiohttp
import pytest

from metrics_adapter.api import BASE, build_app
from metrics_adapter.auth import Gatekeeper, KubernetesReviews, RequestHeaderConfig
from metrics_adapter.server import LIMITS, follow_requestheader
from autoscaler.https_server import serve_https
from autoscaler.tls import ReloadingTLS

from kubernetes_asyncio import client as kube

from .test_metrics_adapter_https import Cluster, serve


async def test_a_request_header_ca_published_after_start_is_followed(tmp_path):
    """emulator: the real API server cannot start without its request-header CA nor replace it on
    cue: its cluster-authentication-trust controller puts its own CA back into
    extension-apiserver-authentication whenever the ConfigMap changes, merged with what is there."""
    cluster = Cluster(tmp_path)  # started without a CA
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
