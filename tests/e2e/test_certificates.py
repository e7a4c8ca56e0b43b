"""Self-managed certificates against the real kube-apiserver, as config/'s webhook ServiceAccount
(its Role may create Secrets and get and update only the two it owns; its ClusterRoles may update
config/'s MutatingWebhookConfiguration and patch its APIService, by name): Secret creation,
renewal, caBundle injection, racing replicas (real 409s), and a real HTTPS handshake with what
was issued (moved here from tests/test_certificates.py).

config/'s own MutatingWebhookConfiguration (its rules emptied: no Service answers it here) and
APIService (unavailable for the same reason) are created for each test and deleted after; the
tests that register the real webhook and adapter use module fixtures, gone by then.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl

import aiohttp
import pytest
import yaml

from autoscaler.certificates import service_names
from autoscaler.kube import Kube
from webhook.certificate_manager import CertificateManager, CertificateTarget
from webhook.server import build_app

from ..control_plane import ROOT
from ..test_metrics_adapter_https import serve
from ..test_webhook import admission, isvc
from .conftest import NAMESPACE, kubectl_json

WEBHOOK = yaml.safe_load((ROOT / "config" / "webhook" / "mutatingwebhookconfiguration.yaml").read_text())
API_SERVICE = yaml.safe_load((ROOT / "config" / "metrics-adapter" / "apiservice.yaml").read_text())
NAMES = tuple(service_names("webhook", NAMESPACE) + service_names("metrics-adapter", NAMESPACE))
TARGET = CertificateTarget(
    NAMESPACE, "inference-autoscaler-tls", NAMES, WEBHOOK["metadata"]["name"], API_SERVICE["metadata"]["name"]
)
SECRETS = (TARGET.secret, TARGET.ca_secret_name)


class Clock:
    def __init__(self):
        self.now = datetime.datetime.now(datetime.timezone.utc)

    def __call__(self) -> datetime.datetime:
        return self.now


@pytest.fixture
async def plane(deployed):
    registered = dict(WEBHOOK, webhooks=[dict(hook, rules=[]) for hook in WEBHOOK["webhooks"]])
    objects = {"apiVersion": "v1", "kind": "List", "items": [registered, API_SERVICE]}
    deployed.kubectl("apply", "--server-side", "--force-conflicts", "--filename=-", input=json.dumps(objects))
    yield deployed
    deployed.kubectl("delete", "secret", *SECRETS, f"--namespace={NAMESPACE}", "--ignore-not-found")
    deployed.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK["metadata"]["name"])
    deployed.kubectl("delete", "apiservice", API_SERVICE["metadata"]["name"])


async def webhook_kube(plane) -> Kube:
    return await Kube.connect(str(plane.service_account_kubeconfig(NAMESPACE, "webhook")))


def bundles(plane) -> set[str]:
    hooks = kubectl_json(plane, "get", "mutatingwebhookconfiguration", TARGET.webhook_configuration)["webhooks"]
    service = kubectl_json(plane, "get", "apiservice", TARGET.api_service)
    return {h["clientConfig"].get("caBundle") for h in hooks} | {service["spec"].get("caBundle")}


async def test_secret_created_ca_injected_and_a_second_pass_writes_nothing(plane):
    kube = await webhook_kube(plane)
    try:
        manager = CertificateManager(kube, TARGET)
        material = await manager.reconcile()
        secret = kubectl_json(plane, "get", "secret", TARGET.secret, f"--namespace={NAMESPACE}")
        assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
        assert bundles(plane) == {base64.b64encode(material.ca.encode()).decode()}
        assert manager.writes == 4  # the CA's Secret, the serving Secret, two bundles
        await manager.reconcile()
        assert manager.writes == 4
    finally:
        await kube.close()


async def test_renewal_before_expiry_keeps_the_ca_and_the_bundles(plane):
    kube = await webhook_kube(plane)
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


async def test_racing_replicas_agree_on_one_ca(plane):
    kubes = [await webhook_kube(plane) for _ in range(4)]  # four replicas, a client each
    try:
        results = await asyncio.gather(*(CertificateManager(kube, TARGET).reconcile() for kube in kubes))
        assert len({r.ca for r in results}) == 1 and len(bundles(plane)) == 1
    finally:
        for kube in kubes:
            await kube.close()


async def test_the_issued_certificate_serves_the_webhook_to_a_client_trusting_the_bundle(plane, tmp_path):
    kube = await webhook_kube(plane)
    try:
        material = await CertificateManager(kube, TARGET).reconcile()
    finally:
        await kube.close()
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    assert material.write(cert_file, key_file) and not material.write(cert_file, key_file)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    webhook, port = await serve(build_app({}), ssl_context=server_context)
    try:
        hooks = kubectl_json(plane, "get", "mutatingwebhookconfiguration", TARGET.webhook_configuration)["webhooks"]
        client_context = ssl.create_default_context(cadata=base64.b64decode(hooks[0]["clientConfig"]["caBundle"]).decode())
        body = json.dumps(admission(isvc({}))).encode()
        # the API server dials <service>.<namespace>.svc and checks that name: so does this client
        connector = aiohttp.TCPConnector(ssl=client_context)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(
                f"https://127.0.0.1:{port}/mutate", data=body, server_hostname=f"webhook.{NAMESPACE}.svc"
            ) as response:
                assert response.status == 200 and (await response.json())["response"]["allowed"]
    finally:
        await webhook.cleanup()
