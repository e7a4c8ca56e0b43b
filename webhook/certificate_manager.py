"""Self-managed certificates for the webhook, the metrics adapter and the controller.

Two Secrets: the CA (ca.crt and ca.key, Opaque) in one that only the webhook may read, and the
serving certificate for every Service name given (kubernetes.io/tls: tls.crt, tls.key, plus the
CA's certificate as ca.crt) in another that the TLS pods mount, so no pod but the webhook holds
the key that could sign certificates our components trust. Each pass: read or create the CA
Secret (an older combined Secret's CA is moved there, not replaced, so clients keep trusting),
create the serving Secret if missing, renew its certificate when a third of its life is left or
the names changed, drop a ca.key left in it, then write the CA into the caBundle of our
MutatingWebhookConfiguration and APIService where it differs. Every write carries the
resourceVersion it read: replicas racing each other get a 409, re-read and agree.

With cert-manager instead (`--certificates cert-manager`), none of this runs: a Certificate
fills the Secret and cainjector fills the caBundles (config/cert-manager/).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autoscaler.certificates import Authority, key_pem, needs_renewal
from autoscaler.files import write_private
from autoscaler.kube import API_SERVICES, MUTATING_WEBHOOKS, SECRETS, ApiError, Kube, with_retries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertificateTarget:
    namespace: str
    secret: str
    names: tuple[str, ...]  # DNS names the serving certificate covers (all our Services)
    webhook_configuration: str = ""  # MutatingWebhookConfiguration to patch, if any
    api_service: str = ""  # APIService to patch, if any
    ca_secret: str = ""  # the CA's Secret (default: the serving Secret's name + "-ca")

    @property
    def ca_secret_name(self) -> str:
        return self.ca_secret or f"{self.secret}-ca"


@dataclass(frozen=True)
class Material:
    ca: str
    cert: str
    key: str

    @staticmethod
    def of(secret: dict) -> "Material":
        data = secret.get("data") or {}
        return Material(_unb64(data, "ca.crt"), _unb64(data, "tls.crt"), _unb64(data, "tls.key"))

    def write(self, cert_file: Path, key_file: Path) -> bool:
        """Write the serving pair where the server reads it, each file 0600 and atomically (key
        first: a reload between the two then fails on a mismatched pair and keeps the old one);
        returns whether it changed."""
        if cert_file.exists() and cert_file.read_text() == self.cert:
            return False
        write_private(key_file, self.key)
        write_private(cert_file, self.cert)
        return True


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(data: dict, key: str) -> str:
    return base64.b64decode(data.get(key, "")).decode() if data.get(key) else ""


class CertificateManager:
    def __init__(self, kube: Kube, target: CertificateTarget, clock: Callable[[], datetime.datetime] | None = None):
        self.kube = kube
        self.target = target
        self.clock = clock or (lambda: datetime.datetime.now(datetime.timezone.utc))
        self.writes = 0

    def _secret(self, name: str, kind: str, data: dict[str, str], version: str = "") -> dict:
        metadata = {"name": name, "namespace": self.target.namespace}
        if version:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": kind,
            "metadata": metadata,
            "data": {key: _b64(value) for key, value in data.items()},
        }

    def _serving(self, ca: Authority, version: str = "") -> dict:
        cert, key = ca.issue(self.target.names[0], list(self.target.names), now=self.clock(), peer=True)
        data = {"tls.crt": cert, "tls.key": key, "ca.crt": ca.pem}
        return self._secret(self.target.secret, "kubernetes.io/tls", data, version)

    def _new_ca(self) -> Authority:
        return Authority.create(f"inference-autoscaler-ca.{self.target.namespace}", now=self.clock())

    async def _get(self, name: str) -> dict | None:
        return await self.kube.find(SECRETS, self.target.namespace, name)

    async def ensure_ca(self) -> Authority:
        """The CA from its Secret; made when missing, from the serving Secret's ca.key when an
        older version kept it there (the same CA, so every client's trust holds)."""

        async def attempt() -> Authority:
            t = self.target
            secret = await self._get(t.ca_secret_name)
            if secret is not None:
                data = secret.get("data") or {}
                try:
                    return Authority.load(_unb64(data, "ca.crt"), _unb64(data, "ca.key"))
                except ValueError:  # damaged: a new CA (the serving certificate follows)
                    ca, why = self._new_ca(), "no usable CA in it"
                    data = {"ca.crt": ca.pem, "ca.key": key_pem(ca.key)}
                    body = self._secret(t.ca_secret_name, "Opaque", data, secret["metadata"]["resourceVersion"])
                    await self.kube.replace(SECRETS, t.namespace, t.ca_secret_name, body)
                    self.writes += 1
                    log.warning("replaced the CA in Secret %s/%s: %s", t.namespace, t.ca_secret_name, why)
                    return ca
            legacy = (await self._get(t.secret) or {}).get("data") or {}
            try:
                ca, origin = Authority.load(_unb64(legacy, "ca.crt"), _unb64(legacy, "ca.key")), f"moved from {t.secret}"
            except ValueError:
                ca, origin = self._new_ca(), "created"
            data = {"ca.crt": ca.pem, "ca.key": key_pem(ca.key)}
            await self.kube.create(SECRETS, t.namespace, self._secret(t.ca_secret_name, "Opaque", data))  # racing: 409
            self.writes += 1
            log.info("CA %s in Secret %s/%s", origin, t.namespace, t.ca_secret_name)
            return ca

        return await with_retries(attempt, "CA Secret")

    async def ensure_secret(self) -> Material:
        """What the serving Secret holds once it holds a valid serving certificate of our CA."""
        ca = await self.ensure_ca()

        async def attempt() -> Material:
            t = self.target
            secret = await self._get(t.secret)
            if secret is None:
                created = await self.kube.create(SECRETS, t.namespace, self._serving(ca))  # a racing replica: 409
                self.writes += 1
                log.info("created the serving certificate in Secret %s/%s", t.namespace, t.secret)
                return Material.of(created)
            data = secret.get("data") or {}
            why = needs_renewal(_unb64(data, "tls.crt"), ca.pem, list(t.names), now=self.clock())
            if not why and "ca.key" in data:
                why = "the CA's key moves to its own Secret"  # the serving pair stays valid: only the key goes
                kept = {k: _unb64(data, k) for k in ("tls.crt", "tls.key", "ca.crt")}
                body = self._secret(t.secret, "kubernetes.io/tls", kept, secret["metadata"]["resourceVersion"])
            elif why:
                body = self._serving(ca, secret["metadata"]["resourceVersion"])
            if why:
                secret = await self.kube.replace(SECRETS, t.namespace, t.secret, body)
                self.writes += 1
                log.info("rewrote Secret %s/%s: %s", t.namespace, t.secret, why)
            return Material.of(secret)

        return await with_retries(attempt, "serving certificate Secret")

    async def inject_ca(self, ca_pem: str) -> None:
        bundle = _b64(ca_pem)
        t = self.target
        if t.webhook_configuration:

            async def webhooks() -> None:
                config = await self.kube.get(MUTATING_WEBHOOKS, None, t.webhook_configuration)
                hooks = config.get("webhooks") or []
                if all((h.get("clientConfig") or {}).get("caBundle") == bundle for h in hooks):
                    return
                for hook in hooks:
                    hook.setdefault("clientConfig", {})["caBundle"] = bundle
                await self.kube.replace(MUTATING_WEBHOOKS, None, t.webhook_configuration, config)  # carries its resourceVersion
                self.writes += 1

            await with_retries(webhooks, f"caBundle of {t.webhook_configuration}")
        if t.api_service:

            async def api_service() -> None:
                service = await self.kube.get(API_SERVICES, None, t.api_service)
                if (service.get("spec") or {}).get("caBundle") == bundle:
                    return
                patch = {"metadata": {"resourceVersion": service["metadata"]["resourceVersion"]}, "spec": {"caBundle": bundle}}
                await self.kube.patch(API_SERVICES, None, t.api_service, patch)
                self.writes += 1

            await with_retries(api_service, f"caBundle of {t.api_service}")

    async def reconcile(self) -> Material:
        material = await self.ensure_secret()
        await self.inject_ca(material.ca)
        return material

    async def run(self, cert_file: Path, key_file: Path, every_s: float = 3600.0) -> None:
        while True:
            try:
                (await self.reconcile()).write(cert_file, key_file)
            except ApiError as exc:
                log.error("certificate pass failed (%s); retrying in a minute", exc)
                await asyncio.sleep(60)
                continue
            await asyncio.sleep(every_s)
