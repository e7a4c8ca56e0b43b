"""Who is asking, and may they: delegated authentication (TokenReview) and authorization
(SubjectAccessReview) through the Kubernetes API, shared by our HTTPS endpoints.

The metrics adapter adds the aggregator's request-header identities on top
(metrics_adapter/auth.py); the controller's /metrics and /invoke use `PathGate`: a bearer token,
then the request's path and lower-cased method as a non-resource URL and verb, as
kube-rbac-proxy and controller-runtime's secure metrics do, so RBAC grants them with
`nonResourceURLs`. Both reviews are cached for 10 s. No identity: 401. Not allowed: 403. Review
API down: 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Mapping, Protocol

from aiohttp import web

log = logging.getLogger(__name__)
CACHE_TTL_S = 10.0


@dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.name, self.groups, tuple(sorted(self.extra.items())))


@dataclass(frozen=True)
class Access:
    """What a request asks to do: a resource (group, version, resource, namespace) or, when
    `resource` is empty, a non-resource path."""

    verb: str
    path: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    namespace: str = ""


class ReviewUnavailable(Exception):
    """The Kubernetes API could not answer a review."""


class Reviews(Protocol):
    async def token_review(self, token: str) -> UserInfo | None: ...

    async def access_review(self, user: UserInfo, access: Access) -> tuple[bool, str]: ...


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


class ReviewCaches:
    """Reviews with their answers cached: a bearer token's user, and a user's access."""

    def __init__(self, reviews: Reviews, ttl_s: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.reviews = reviews
        self._tokens = TtlCache(ttl_s, clock)
        self._access = TtlCache(ttl_s, clock)

    async def token_user(self, request: web.Request) -> UserInfo | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()  # the token itself is not kept
        return await self._tokens.get_or_load(key, lambda: self.reviews.token_review(token))

    async def allowed(self, user: UserInfo, access: Access) -> tuple[bool, str]:
        return await self._access.get_or_load((user.key(), access), lambda: self.reviews.access_review(user, access))


class PathGate:
    """Bearer token, then the path and method as a non-resource URL and verb."""

    def __init__(self, reviews: Reviews, ttl_s: float = CACHE_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.caches = ReviewCaches(reviews, ttl_s, clock)

    async def authorize(self, request: web.Request) -> web.Response | None:
        access = Access(verb=request.method.lower(), path=request.path)
        try:
            user = await self.caches.token_user(request)
            if user is None:
                return web.Response(status=401, text="no valid bearer token\n", headers={"WWW-Authenticate": "Bearer"})
            allowed, reason = await self.caches.allowed(user, access)
        except ReviewUnavailable as exc:
            log.warning("review failed: %s", exc)
            return web.Response(status=503, text=f"cannot check access with the Kubernetes API: {exc}\n")
        if allowed:
            return None
        because = f": {reason}" if reason else ""
        return web.Response(status=403, text=f'{user.name} cannot {access.verb} path "{access.path}"{because}\n')


class KubernetesReviews:
    """TokenReview and SubjectAccessReview through the Kubernetes API (kubernetes_asyncio)."""

    def __init__(self, api_client):
        from kubernetes_asyncio import client

        self._client = client
        self._authn = client.AuthenticationV1Api(api_client)
        self._authz = client.AuthorizationV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    async def _call(self, coroutine):
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await coroutine
        except ApiException as exc:
            raise ReviewUnavailable(f"HTTP {exc.status} {exc.reason}") from None
        except OSError as exc:
            raise ReviewUnavailable(str(exc)) from None

    async def token_review(self, token: str) -> UserInfo | None:
        c = self._client
        review = await self._call(self._authn.create_token_review(c.V1TokenReview(spec=c.V1TokenReviewSpec(token=token))))
        result = review.status
        if not result or not result.authenticated or not result.user:
            return None
        extra = {k: tuple(v) for k, v in (result.user.extra or {}).items()}
        return UserInfo(result.user.username, tuple(result.user.groups or ()), extra)

    async def access_review(self, user: UserInfo, access: Access) -> tuple[bool, str]:
        c = self._client
        if access.resource:
            attributes = {
                "resource_attributes": c.V1ResourceAttributes(
                    group=access.group,
                    version=access.version,
                    resource=access.resource,
                    namespace=access.namespace,
                    verb=access.verb,
                )
            }
        else:
            attributes = {"non_resource_attributes": c.V1NonResourceAttributes(path=access.path, verb=access.verb)}
        spec = c.V1SubjectAccessReviewSpec(
            user=user.name, groups=list(user.groups), extra={k: list(v) for k, v in user.extra.items()}, **attributes
        )
        review = await self._call(self._authz.create_subject_access_review(c.V1SubjectAccessReview(spec=spec)))
        return bool(review.status and review.status.allowed), (review.status.reason or "") if review.status else ""
