"""Self-managed certificates: Secret creation, renewal, caBundle injection, racing replicas, and
a real HTTPS handshake with what was issued. The cluster is the Kubernetes API emulator of tests/
(no kube-apiserver runs here): Secrets, the MutatingWebhookConfiguration and the APIService go
through its REST paths with resourceVersion checks."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl

import aiohttp

from autoscaler.certificates import service_names
from autoscaler.kube import Kube
from webhook.certificate_manager import CertificateManager, CertificateTarget
from webhook.server import build_app

from .kube_api_emulator import KubeApiEmulator
from .test_metrics_adapter_https import serve
from .test_webhook import admission, isvc

SECRETS = "api/v1/secrets"
MWCS = "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
API_SERVICES = "apis/apiregistration.k8s.io/v1/apiservices"
NAMESPACE = "inference-autoscaler"
NAMES = tuple(service_names("inference-autoscaler-webhook", NAMESPACE) + service_names("inference-autoscaler-metrics", NAMESPACE))
TARGET = CertificateTarget(
    NAMESPACE, "inference-autoscaler-tls", NAMES, "inference-autoscaler", "v1beta1.external.metrics.k8s.io"
)


class Clock:
    def __init__(self):
        self.now = datetime.datetime.now(datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now


async def cluster():
    emulator = KubeApiEmulator()
    hooks = [{"name": n, "clientConfig": {"service": {"name": "inference-autoscaler-webhook"}}} for n in ("isvc.x", "pods.x")]
    emulator.store.put(MWCS, {"metadata": {"name": "inference-autoscaler"}, "webhooks": hooks})
    emulator.store.put(
        API_SERVICES, {"metadata": {"name": "v1beta1.external.metrics.k8s.io"}, "spec": {"group": "external.metrics.k8s.io"}}
    )
    runner, port = await serve(emulator.app())
    return emulator.store, runner, Kube.at(f"http://127.0.0.1:{port}")


def bundles(store) -> set[str]:
    hooks = store.get(MWCS, "", "inference-autoscaler")["webhooks"]
    return {h["clientConfig"].get("caBundle") for h in hooks} | {
        store.get(API_SERVICES, "", "v1beta1.external.metrics.k8s.io")["spec"].get("caBundle")
    }


async def test_secret_created_ca_injected_and_a_second_pass_writes_nothing():
    store, runner, kube = await cluster()
    try:
        manager = CertificateManager(kube, TARGET)
        material = await manager.reconcile()
        secret = store.get(SECRETS, NAMESPACE, "inference-autoscaler-tls")
        assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        assert bundles(store) == {base64.b64encode(material.ca.encode()).decode()}
        assert manager.writes == 4  # the CA's Secret, the serving Secret, two bundles
        await manager.reconcile()
        assert manager.writes == 4
    finally:
        await kube.close()
        await runner.cleanup()


async def test_renewal_before_expiry_keeps_the_ca_and_the_bundles():
    store, runner, kube = await cluster()
    clock = Clock()
    try:
        manager = CertificateManager(kube, TARGET, clock=clock)
        first = await manager.reconcile()
        clock.now += datetime.timedelta(days=59)  # 31 of 90 days left: still fine
        assert (await manager.reconcile()).cert == first.cert
        clock.now += datetime.timedelta(days=2)  # under a third left: renew
        renewed = await manager.reconcile()
        assert renewed.cert != first.cert and renewed.ca == first.ca
        assert manager.writes == 5  # 2 Secrets, 2 bundles, 1 renewal: the bundles did not change
        wider = CertificateManager(
            kube, CertificateTarget(**{**TARGET.__dict__, "names": NAMES + ("extra.example",)}), clock=clock
        )
        assert (await wider.reconcile()).cert != renewed.cert  # a new Service name: issued again
    finally:
        await kube.close()
        await runner.cleanup()


async def test_racing_replicas_agree_on_one_ca():
    store, runner, kube = await cluster()
    try:
        results = await asyncio.gather(*(CertificateManager(kube, TARGET).reconcile() for _ in range(4)))
        assert len({r.ca for r in results}) == 1 and len(bundles(store)) == 1
    finally:
        await kube.close()
        await runner.cleanup()


async def test_the_issued_certificate_serves_the_webhook_to_a_client_trusting_the_bundle(tmp_path):
    store, runner, kube = await cluster()
    try:
        material = await CertificateManager(kube, TARGET).reconcile()
        cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
        assert material.write(cert_file, key_file) and not material.write(cert_file, key_file)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_context.load_cert_chain(cert_file, key_file)
        webhook, port = await serve(build_app({}), ssl_context=server_context)
        bundle = base64.b64decode(store.get(MWCS, "", "inference-autoscaler")["webhooks"][0]["clientConfig"]["caBundle"]).decode()
        client_context = ssl.create_default_context(cadata=bundle)
        body = json.dumps(admission(isvc({}))).encode()
        # the API server dials <service>.<namespace>.svc and checks that name: so does this client
        connector = aiohttp.TCPConnector(ssl=client_context)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(
                f"https://127.0.0.1:{port}/mutate",
                data=body,
                server_hostname="inference-autoscaler-webhook.inference-autoscaler.svc",
            ) as response:
                assert response.status == 200 and (await response.json())["response"]["allowed"]
        await webhook.cleanup()
    finally:
        await kube.close()
        await runner.cleanup()
