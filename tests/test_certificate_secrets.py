"""The CA's key in a Secret of its own, apart from the serving pair every TLS pod mounts; an
existing combined Secret migrated without a new CA; key files written 0600 and atomically.

On the API emulator (tests/kube_api_emulator.py): Secrets, the MutatingWebhookConfiguration and
the APIService through its REST paths with resourceVersion checks. The certificate manager's
creation, renewal, injection and races run against the real kube-apiserver in
tests/e2e/test_certificates.py."""

from __future__ import annotations

import base64
import os
import stat
import threading

from autoscaler import certificates
from autoscaler.files import write_private
from webhook.certificate_manager import CertificateManager, Material

from autoscaler.certificates import service_names
from autoscaler.kube import Kube
from webhook.certificate_manager import CertificateTarget

from .kube_api_emulator import KubeApiEmulator
from .test_metrics_adapter_https import serve

SECRETS = "api/v1/secrets"
MWCS = "apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
API_SERVICES = "apis/apiregistration.k8s.io/v1/apiservices"
NAMESPACE = "inference-autoscaler"
NAMES = tuple(service_names("inference-autoscaler-webhook", NAMESPACE) + service_names("inference-autoscaler-metrics", NAMESPACE))
TARGET = CertificateTarget(
    NAMESPACE, "inference-autoscaler-tls", NAMES, "inference-autoscaler", "v1beta1.external.metrics.k8s.io"
)


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


CA_SECRET = "inference-autoscaler-tls-ca"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def data(store, name: str) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in store.get(SECRETS, NAMESPACE, name)["data"].items()}


async def test_the_ca_key_lives_in_its_own_secret():
    store, runner, kube = await cluster()
    try:
        manager = CertificateManager(kube, TARGET)
        material = await manager.reconcile()
        serving, ca = data(store, "inference-autoscaler-tls"), data(store, CA_SECRET)
        assert set(serving) == {"tls.crt", "tls.key", "ca.crt"} and set(ca) == {"ca.crt", "ca.key"}
        assert store.get(SECRETS, NAMESPACE, CA_SECRET)["type"] == "Opaque"
        assert serving["ca.crt"] == ca["ca.crt"] == material.ca
        assert certificates.Authority.load(ca["ca.crt"], ca["ca.key"]).pem == material.ca
        assert manager.writes == 4  # CA Secret, serving Secret, two bundles
        await manager.reconcile()
        assert manager.writes == 4
    finally:
        await kube.close()
        await runner.cleanup()


async def test_a_combined_secret_is_split_keeping_its_ca():
    store, runner, kube = await cluster()
    try:
        legacy_ca = certificates.Authority.create("inference-autoscaler-ca.inference-autoscaler")
        cert, key = legacy_ca.issue(TARGET.names[0], list(TARGET.names))
        legacy = {"tls.crt": cert, "tls.key": key, "ca.crt": legacy_ca.pem, "ca.key": certificates.key_pem(legacy_ca.key)}
        store.put(
            SECRETS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {"name": "inference-autoscaler-tls", "namespace": NAMESPACE},
                "data": {k: b64(v) for k, v in legacy.items()},
            },
        )
        material = await CertificateManager(kube, TARGET).reconcile()
        assert material.ca == legacy_ca.pem  # not issued again: clients keep trusting
        assert data(store, CA_SECRET) == {"ca.crt": legacy["ca.crt"], "ca.key": legacy["ca.key"]}
        assert "ca.key" not in data(store, "inference-autoscaler-tls")
        assert bundles(store) == {b64(legacy_ca.pem)}
    finally:
        await kube.close()
        await runner.cleanup()


async def test_an_interrupted_migration_finishes_on_the_next_pass():
    store, runner, kube = await cluster()
    try:
        material = await CertificateManager(kube, TARGET).reconcile()
        serving = store.get(SECRETS, NAMESPACE, "inference-autoscaler-tls")
        serving["data"]["ca.key"] = store.get(SECRETS, NAMESPACE, CA_SECRET)["data"]["ca.key"]
        store.put(SECRETS, serving)  # as if a pass had stopped between the two writes
        again = await CertificateManager(kube, TARGET).reconcile()
        assert "ca.key" not in data(store, "inference-autoscaler-tls") and again.ca == material.ca
    finally:
        await kube.close()
        await runner.cleanup()


def test_key_files_are_private_and_never_seen_half_written(tmp_path):
    path = tmp_path / "tls.key"
    versions = ["A" * 64_000, "B" * 64_000]  # large enough that a plain write lands in pieces
    write_private(path, versions[0])
    seen, done = set(), threading.Event()

    def reader():
        while not done.is_set():
            try:
                seen.add(path.read_text())
            except FileNotFoundError:
                seen.add("<missing>")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            write_private(path, versions[i % 2])
    finally:
        done.set()
        thread.join()
    assert seen <= set(versions), sorted(s[:20] + f"... ({len(s)} chars)" for s in seen - set(versions))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["tls.key"]  # no temporary left behind


def test_the_written_serving_key_is_private(tmp_path):
    ca = certificates.Authority.create("ca")
    cert, key = ca.issue("webhook", ["webhook"])
    Material(ca.pem, cert, key).write(tmp_path / "tls.crt", tmp_path / "tls.key")
    assert stat.S_IMODE(os.stat(tmp_path / "tls.key").st_mode) == 0o600
    assert (tmp_path / "tls.key").read_text() == key and (tmp_path / "tls.crt").read_text() == cert
