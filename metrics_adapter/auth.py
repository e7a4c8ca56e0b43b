"""Who is asking, and may they: the delegated authentication and authorization of an
extension API server.

- The kube-aggregator proxies with a client certificate signed by the request-header CA (from
  the ConfigMap kube-system/extension-apiserver-authentication); only then, and only if its
  common name is among the allowed names (any, when the list is empty), are the X-Remote-User,
  X-Remote-Group and X-Remote-Extra-* headers believed. A certificate from another CA fails the
  TLS handshake itself.
- Otherwise a bearer token is checked with a TokenReview.
- Every request is then authorised with a SubjectAccessReview: verb "list" on the metric as a
  resource of external.metrics.k8s.io in the namespace, or "get" on the path for discovery.
The reviews and their caches are shared with the controller (autoscaler/kube_auth.py). No
identity: 401. Not allowed: 403. Review API down: 503.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Mapping

from aiohttp import web

from autoscaler import kube_auth
from autoscaler.kube_auth import CACHE_TTL_S, Access, ReviewCaches, Reviews, ReviewUnavailable, UserInfo

from .api import GROUP, VERSION, status

log = logging.getLogger(__name__)
__all__ = ["Gatekeeper", "KubernetesReviews", "RequestHeaderConfig", "ReviewUnavailable", "UserInfo"]


@dataclass(frozen=True)
class RequestHeaderConfig:
    client_ca_pem: str = ""
    allowed_names: tuple[str, ...] = ()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)

    @staticmethod
    def from_configmap(data: Mapping[str, str]) -> "RequestHeaderConfig":
        def names(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
            raw = data.get(key)
            return tuple(json.loads(raw)) if raw else default

        return RequestHeaderConfig(
            client_ca_pem=data.get("requestheader-client-ca-file", ""),
            allowed_names=names("requestheader-allowed-names", ()),
            username_headers=names("requestheader-username-headers", ("X-Remote-User",)),
            group_headers=names("requestheader-group-headers", ("X-Remote-Group",)),
            extra_prefixes=names("requestheader-extra-headers-prefix", ("X-Remote-Extra-",)),
        )


def _common_name(peercert: dict | None) -> str | None:
    for rdn in (peercert or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return value
    return None


class Gatekeeper:
    def __init__(
        self,
        requestheader: RequestHeaderConfig,
        reviews: Reviews,
        cache_ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.requestheader = requestheader
        self.caches = ReviewCaches(reviews, cache_ttl_s, clock)

    def _front_proxy_user(self, request: web.Request) -> UserInfo | None:
        transport = request.transport
        peercert = transport.get_extra_info("peercert") if transport else None
        if not peercert:
            return None  # no certificate: the TLS layer already refused untrusted ones
        name = _common_name(peercert)
        allowed = self.requestheader.allowed_names
        if allowed and name not in allowed:
            raise web.HTTPForbidden(reason=f"client certificate {name!r} is not an allowed request-header client")
        headers = request.headers
        user = next((headers[h] for h in self.requestheader.username_headers if headers.get(h)), None)
        if not user:
            return None
        groups = tuple(g for h in self.requestheader.group_headers for g in headers.getall(h, ()))
        extra: dict[str, tuple[str, ...]] = {}
        for prefix in self.requestheader.extra_prefixes:
            for key in headers:
                if key.lower().startswith(prefix.lower()):
                    extra.setdefault(key[len(prefix) :].lower(), tuple(headers.getall(key)))
        return UserInfo(user, groups, extra)

    async def authorize(self, request: web.Request, namespace: str, metric: str) -> web.Response | None:
        try:
            try:
                user = self._front_proxy_user(request) or await self.caches.token_user(request)
            except web.HTTPForbidden as exc:
                return status(403, "Forbidden", exc.reason)
            if user is None:
                return status(401, "Unauthorized", "Unauthorized: no trusted client certificate and no valid bearer token")
            if metric:
                access = Access("list", group=GROUP, version=VERSION, resource=metric, namespace=namespace)
            else:
                access = Access("get", path=request.path)
            allowed, reason = await self.caches.allowed(user, access)
        except ReviewUnavailable as exc:
            log.warning("review failed: %s", exc)
            return status(503, "ServiceUnavailable", f"cannot check access with the Kubernetes API: {exc}")
        if allowed:
            return None
        if metric:
            what = f'list resource "{metric}" in API group "{GROUP}" in the namespace "{namespace}"'
        else:
            what = f'get path "{request.path}"'
        return status(403, "Forbidden", f"{user.name} cannot {what}" + (f": {reason}" if reason else ""))


class KubernetesReviews(kube_auth.KubernetesReviews):
    """The reviews, and the request-header ConfigMap, through the Kubernetes API."""

    async def requestheader_config(self) -> RequestHeaderConfig:
        configmap = await self._call(self._core.read_namespaced_config_map("extension-apiserver-authentication", "kube-system"))
        return RequestHeaderConfig.from_configmap(configmap.data or {})
