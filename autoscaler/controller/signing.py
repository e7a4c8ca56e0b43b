"""The decision annotation, signed: a tenant who may edit an opted-in ISVC must not be able to
tell the controller what it decided last (and so the GPU type, replicas or calibration it
resumes from).

The controller writes `decision` together with `decision-signature`, an HMAC-SHA256 over the
ISVC's uid, namespace/name and the decision text, keyed by a Secret in our namespace that only
the controller may read. A decision whose signature does not verify (forged, edited, copied from
another ISVC, or written before signing existed) is ignored as if absent: the controller decides
afresh and writes a signed one, which gives a tenant no more than deleting the annotation
already did. Why not move the state out of the ISVC: the decision and a rollout of a new GPU
type go into one patch, atomically; split across two objects, a crash between the writes would
lose or repeat the rollout. Left open: a tenant may put back an older decision of the same ISVC,
signed in its day (see the README).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets

from ..errors import InputError
from ..kube import SECRETS, Kube, with_retries

log = logging.getLogger(__name__)
KEY_BYTES = 32
SECRET_KEY = "key"


class DecisionSigner:
    def __init__(self, key: bytes):
        if len(key) < KEY_BYTES:
            raise ValueError(f"the decision signing key must have at least {KEY_BYTES} bytes")
        self._key = key

    @staticmethod
    def _message(uid: str, namespace: str, name: str, decision: str) -> bytes:
        return f"{uid}\n{namespace}/{name}\n{decision}".encode()

    def sign(self, uid: str, namespace: str, name: str, decision: str) -> str:
        return hmac.new(self._key, self._message(uid, namespace, name, decision), hashlib.sha256).hexdigest()

    def verify(self, uid: str, namespace: str, name: str, decision: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(uid, namespace, name, decision), signature)

    @classmethod
    async def from_secret(cls, kube: Kube, namespace: str, name: str) -> "DecisionSigner":
        """The key from Secret `namespace/name`, made on first start (replicas racing to create it
        get a 409 and read the winner's)."""

        async def attempt() -> bytes:
            secret = await kube.find(SECRETS, namespace, name)
            if secret is None:
                key = secrets.token_bytes(KEY_BYTES)
                body = {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "type": "Opaque",
                    "metadata": {"name": name, "namespace": namespace},
                    "data": {SECRET_KEY: base64.b64encode(key).decode()},
                }
                await kube.create(SECRETS, namespace, body)
                log.info("created the decision signing key in Secret %s/%s", namespace, name)
                return key
            return base64.b64decode((secret.get("data") or {}).get(SECRET_KEY, ""))

        key = await with_retries(attempt, f"decision signing key {namespace}/{name}")
        try:
            return cls(key)
        except ValueError as exc:
            raise InputError(f"Secret {namespace}/{name}", SECRET_KEY, str(exc)) from None
