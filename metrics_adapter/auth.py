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
Both reviews are cached for 10 s. No identity: 401. Not allowed: 403. Review API down, slow,
answering nonsense or too busy: 503.

Each review times out, and token and access reviews each have a bounded number in flight (a
review beyond it is refused at once, not queued): a hanging API server and a flood of random
tokens then fill neither the API client's connection pool nor the event loop, and the HPA's own
request (a front-proxy identity: an access review only, usually cached) still gets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Protocol

import aiohttp
from aiohttp import web

from .api import GROUP, VERSION, status

log = logging.getLogger(__name__)
CACHE_TTL_S = 10.0
REVIEW_TIMEOUT_S = 5.0  # the HPA's own request gives up after ~30 s: well within it, with a retry
REVIEWS_IN_FLIGHT = 16  # per kind; both kinds together stay below the API client's pool (100)


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


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


class ReviewUnavailable(Exception):
    """The Kubernetes API could not answer a review."""


class Reviews(Protocol):
    async def token_review(self, token: str) -> UserInfo | None: ...

    async def access_review(self, user: UserInfo, namespace: str, metric: str, path: str) -> tuple[bool, str]: ...


class TtlCache:
    """Answers kept for `ttl_s`; concurrent misses of one key share a single lookup, so an entry
    expiring under load costs one review, not one per request in flight (a thundering herd)."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic, limit: int = 10_000):
        self.ttl_s, self.clock, self.limit = ttl_s, clock, limit
        self._entries: dict = {}
        self._loading: dict[object, asyncio.Future] = {}

    async def get_or_load(self, key, load: Callable[[], Awaitable]):
        entry = self._entries.get(key)
        if entry is not None and self.clock() - entry[0] <= self.ttl_s:
            return entry[1]
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.ensure_future(load())
            pending.add_done_callback(lambda done: self._finish(key, done))
        return await asyncio.shield(pending)

    def _finish(self, key, done: asyncio.Future) -> None:
        self._loading.pop(key, None)
        if done.cancelled() or done.exception() is not None:
            return  # failures are not cached: the next request asks again
        if len(self._entries) >= self.limit:
            self._entries.clear()  # crude but bounded: a burst of distinct callers cannot grow it
        self._entries[key] = (self.clock(), done.result())


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
        self.reviews = reviews
        self._tokens = TtlCache(cache_ttl_s, clock)
        self._access = TtlCache(cache_ttl_s, clock)

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

    async def _token_user(self, request: web.Request) -> UserInfo | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        key = hashlib.sha256(token.strip().encode()).hexdigest()
        return await self._tokens.get_or_load(key, lambda: self.reviews.token_review(token.strip()))

    async def authorize(self, request: web.Request, namespace: str, metric: str) -> web.Response | None:
        try:
            try:
                user = self._front_proxy_user(request) or await self._token_user(request)
            except web.HTTPForbidden as exc:
                return status(403, "Forbidden", exc.reason)
            if user is None:
                return status(401, "Unauthorized", "Unauthorized: no trusted client certificate and no valid bearer token")
            key = (
                user.name,
                user.groups,
                tuple(sorted(user.extra.items())),
                namespace,
                metric,
                request.path if not metric else "",
            )
            allowed, reason = await self._access.get_or_load(
                key, lambda: self.reviews.access_review(user, namespace, metric, request.path)
            )
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


class KubernetesReviews:
    """Reviews and the request-header ConfigMap through the Kubernetes API (kubernetes_asyncio)."""

    def __init__(self, api_client, timeout_s: float = REVIEW_TIMEOUT_S, in_flight: int = REVIEWS_IN_FLIGHT):
        from kubernetes_asyncio import client

        self.api_client = api_client
        self.timeout_s = timeout_s
        self._client = client
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._slots = {"token": asyncio.Semaphore(in_flight), "access": asyncio.Semaphore(in_flight)}

    async def _call(self, call: Callable[..., Awaitable], *args, kind: str = ""):
        """`call(*args)` with a timeout, within its kind's slots; every failure to get a
        readable answer is a ReviewUnavailable (a 503), never an exception of the client's."""
        from kubernetes_asyncio.client.exceptions import ApiException

        slots = self._slots.get(kind)
        if slots is not None and slots.locked():
            raise ReviewUnavailable(f"too many {kind} reviews in flight")
        try:
            async with slots or contextlib.nullcontext():
                return await asyncio.wait_for(call(*args, _request_timeout=self.timeout_s), self.timeout_s)
        except ApiException as exc:
            raise ReviewUnavailable(f"HTTP {exc.status} {exc.reason}") from None
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ReviewUnavailable(f"no answer within {self.timeout_s:g} s: {exc.__class__.__name__} {exc}".strip()) from None
        except (ValueError, TypeError, AttributeError) as exc:  # the client's models refuse what is not a review
            raise ReviewUnavailable(f"unreadable answer: {exc}") from None

    async def token_review(self, token: str) -> UserInfo | None:
        c = self._client
        body = c.V1TokenReview(spec=c.V1TokenReviewSpec(token=token))
        review = await self._call(self._authn.create_token_review, body, kind="token")
        result = getattr(review, "status", None)
        if not result or result.authenticated is not True or not result.user or not isinstance(result.user.username, str):
            return None
        extra = {k: tuple(v) for k, v in (result.user.extra or {}).items()}
        return UserInfo(result.user.username, tuple(result.user.groups or ()), extra)

    async def access_review(self, user: UserInfo, namespace: str, metric: str, path: str) -> tuple[bool, str]:
        c = self._client
        if metric:
            attributes = {
                "resource_attributes": c.V1ResourceAttributes(
                    group=GROUP, version=VERSION, resource=metric, namespace=namespace, verb="list"
                )
            }
        else:
            attributes = {"non_resource_attributes": c.V1NonResourceAttributes(path=path, verb="get")}
        spec = c.V1SubjectAccessReviewSpec(
            user=user.name, groups=list(user.groups), extra={k: list(v) for k, v in user.extra.items()}, **attributes
        )
        review = await self._call(self._authz.create_subject_access_review, c.V1SubjectAccessReview(spec=spec), kind="access")
        result = getattr(review, "status", None)
        return bool(result and result.allowed is True), str(result.reason or "") if result else ""

    async def requestheader_config(self) -> RequestHeaderConfig:
        configmap = await self._call(self._core.read_namespaced_config_map, "extension-apiserver-authentication", "kube-system")
        return RequestHeaderConfig.from_configmap(configmap.data or {})
