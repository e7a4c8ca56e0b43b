"""Self-managed certificates for the webhook and the metrics adapter.

One Secret (kubernetes.io/tls, plus ca.crt and ca.key) holds a CA and a serving certificate for
every Service name given; the pods mount it and reload it (autoscaler.tls). Each pass:
create the Secret if missing, renew the serving certificate when a third of its life is left
or the names changed (the CA stays, so clients keep trusting), then write the CA into the
caBundle of our MutatingWebhookConfiguration and APIService where it differs. Every write
carries the resourceVersion it read: replicas racing each other get a 409, re-read and agree.

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
from autoscaler.kube import API_SERVICES, MUTATING_WEBHOOKS, SECRETS, ApiError, Kube, with_retries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CertificateTarget:
    namespace: str
    secret: str
    names: tuple[str, ...]  # DNS names the serving certificate covers (all our Services)
    webhook_configuration: str = ""  # MutatingWebhookConfiguration to patch, if any
    api_service: str = ""  # APIService to patch, if any


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
        """Write the serving pair where the server reads it (key first: a reload between the two
        writes then fails on a mismatched pair and keeps the old one); returns whether it changed."""
        if cert_file.exists() and cert_file.read_text() == self.cert:
            return False
        key_file.write_text(self.key)
        cert_file.write_text(self.cert)
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

    def _secret(self, ca: Authority, version: str = "") -> dict:
        cert, key = ca.issue(self.target.names[0], list(self.target.names), now=self.clock(), peer=True)
        metadata = {"name": self.target.secret, "namespace": self.target.namespace}
        if version:
            metadata["resourceVersion"] = version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": metadata,
            "data": {
                "tls.crt": _b64(cert),
                "tls.key": _b64(key),
                "ca.crt": _b64(ca.pem),
                "ca.key": _b64(key_pem(ca.key)),
            },
        }

    async def ensure_secret(self) -> Material:
        """What the Secret holds once it holds a valid serving certificate."""

        async def attempt() -> Material:
            t = self.target
            try:
                secret = await self.kube.get(SECRETS, t.namespace, t.secret)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                ca = Authority.create(f"inference-autoscaler-ca.{t.namespace}", now=self.clock())
                created = await self.kube.create(SECRETS, t.namespace, self._secret(ca))  # a racing replica: 409
                self.writes += 1
                log.info("created CA and serving certificate in Secret %s/%s", t.namespace, t.secret)
                return Material.of(created)
            data = secret.get("data") or {}
            ca_pem, ca_key = _unb64(data, "ca.crt"), _unb64(data, "ca.key")
            try:
                ca = Authority.load(ca_pem, ca_key)
            except ValueError:  # someone else's Secret (or damaged): start over with a new CA
                ca = Authority.create(f"inference-autoscaler-ca.{t.namespace}", now=self.clock())
                why = "no usable CA in it"
            else:
                why = needs_renewal(_unb64(data, "tls.crt"), ca_pem, list(t.names), now=self.clock())
            if why:
                version = secret["metadata"]["resourceVersion"]
                secret = await self.kube.replace(SECRETS, t.namespace, t.secret, self._secret(ca, version))
                self.writes += 1
                log.info("renewed the serving certificate in Secret %s/%s: %s", t.namespace, t.secret, why)
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
