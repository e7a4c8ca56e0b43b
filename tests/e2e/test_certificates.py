"""Self-managed certificates against the real kube-apiserver, as config/'s webhook ServiceAccount
(its Role may create Secrets and get and update only the two it owns; its ClusterRoles may update
config/'s MutatingWebhookConfiguration and patch its APIService, by name): the CA's key in
a Secret of its own apart from the serving pair, renewal, caBundle injection, racing replicas
(real 409s), an older combined Secret split keeping its CA (also when a pass stopped halfway), and
a real HTTPS handshake with what was issued (moved here from tests/test_certificates.py and
tests/test_certificate_secrets.py).

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

from autoscaler import certificates
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


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(plane, name: str) -> dict:
    return kubectl_json(plane, "get", "secret", name, f"--namespace={NAMESPACE}")


def data(plane, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret(plane, name)["data"].items()}


def bundles(plane) -> set[str]:
    hooks = kubectl_json(plane, "get", "mutatingwebhookconfiguration", TARGET.webhook_configuration)["webhooks"]
    service = kubectl_json(plane, "get", "apiservice", TARGET.api_service)
    return {h["clientConfig"].get("caBundle") for h in hooks} | {service["spec"].get("caBundle")}


async def test_secret_created_ca_injected_and_a_second_pass_writes_nothing(plane):
    kube = await webhook_kube(plane)
    try:
        manager = CertificateManager(kube, TARGET)
        material = await manager.reconcile()
        assert secret(plane, TARGET.secret)["type"] == "kubernetes.io/tls"
        assert secret(plane, TARGET.ca_secret_name)["type"] == "Opaque"
        # the CA's key only in the CA's Secret (which no TLS pod mounts), not beside the serving pair
        serving, ca = data(plane, TARGET.secret), data(plane, TARGET.ca_secret_name)
        assert set(serving) == {"tls.crt", "tls.key", "ca.crt"} and set(ca) == {"ca.crt", "ca.key"}
        assert serving["ca.crt"] == ca["ca.crt"] == material.ca
        assert certificates.Authority.load(ca["ca.crt"], ca["ca.key"]).pem == material.ca
        assert bundles(plane) == {b64(material.ca)}
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


async def test_a_combined_secret_is_split_keeping_its_ca(plane):
    """An older version kept the CA's key in the serving Secret: its CA moves to the CA's Secret
    (not issued again: clients keep trusting) and the key leaves the serving Secret, whose type
    (immutable on the real server) stays kubernetes.io/tls."""
    legacy_ca = certificates.Authority.create("inference-autoscaler-ca.inference-autoscaler")
    cert, key = legacy_ca.issue(TARGET.names[0], list(TARGET.names))
    legacy = {"tls.crt": cert, "tls.key": key, "ca.crt": legacy_ca.pem, "ca.key": certificates.key_pem(legacy_ca.key)}
    combined = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": TARGET.secret, "namespace": NAMESPACE},
        "data": {k: b64(v) for k, v in legacy.items()},
    }
    plane.kubectl("create", "--filename=-", input=json.dumps(combined))
    kube = await webhook_kube(plane)
    try:
        material = await CertificateManager(kube, TARGET).reconcile()
    finally:
        await kube.close()
    assert material.ca == legacy_ca.pem
    assert data(plane, TARGET.ca_secret_name) == {"ca.crt": legacy["ca.crt"], "ca.key": legacy["ca.key"]}
    serving = data(plane, TARGET.secret)
    assert set(serving) == {"tls.crt", "tls.key", "ca.crt"} and serving["ca.crt"] == legacy_ca.pem
    assert bundles(plane) == {b64(legacy_ca.pem)}


async def test_an_interrupted_migration_finishes_on_the_next_pass(plane):
    kube = await webhook_kube(plane)
    try:
        material = await CertificateManager(kube, TARGET).reconcile()
        # as if a pass of the older layout's migration had stopped between its two writes
        ca_key = secret(plane, TARGET.ca_secret_name)["data"]["ca.key"]
        patch = json.dumps({"data": {"ca.key": ca_key}})
        plane.kubectl("patch", "secret", TARGET.secret, f"--namespace={NAMESPACE}", f"--patch={patch}")
        again = await CertificateManager(kube, TARGET).reconcile()
    finally:
        await kube.close()
    assert "ca.key" not in data(plane, TARGET.secret) and again.ca == material.ca and again.cert == material.cert


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
