"""HTTP surface of the aggregated API server for external.metrics.k8s.io/v1beta1.

Every answer is JSON with Content-Type application/json whatever the Accept header asks (the
HPA asks for protobuf first and falls back). Errors are metav1 Status objects. Discovery,
health and OpenAPI paths follow what the kube-aggregator expects of an extension server.
"""

from __future__ import annotations

import json
from typing import Awaitable, Callable, Protocol

from aiohttp import web

from .selectors import SelectorError, parse_selector

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
BASE = f"/apis/{GROUP_VERSION}"
JSON = "application/json"
# An HPA's selector is a few requirements on labels (names <= 253, values <= 63 characters);
# 4 KiB holds dozens, and the parser's work stays small whatever a caller sends.
MAX_SELECTOR_CHARS = 4096


class SourceUnavailable(Exception):
    """The source of values (Prometheus) cannot answer now."""


class MetricSource(Protocol):
    """Where values come from: the in-memory store fed over gRPC, or Prometheus."""

    async def items(self, namespace: str, metric: str, selector) -> list[str]: ...

    def metric_names(self) -> set[str]: ...


def _json(document: dict | str, code: int = 200) -> web.Response:
    text = document if isinstance(document, str) else json.dumps(document)
    # exactly "application/json", as the API server sends it (aiohttp would add a charset)
    return web.Response(status=code, body=text.encode(), headers={"Content-Type": JSON})


def status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return _json(body, code)


def resource_list(names: set[str]) -> dict:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {"name": name, "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList", "verbs": ["get"]}
            for name in sorted(names)
        ],
    }


Authorizer = Callable[[web.Request, str, str], Awaitable[web.Response | None]]


def build_app(source: MetricSource, authorize: Authorizer, ready: Callable[[], bool] = lambda: True) -> web.Application:
    """`authorize(request, namespace, metric)` returns None to allow, or the error response."""

    async def discovery(request: web.Request) -> web.Response:
        denied = await authorize(request, "", "")
        return denied or _json(resource_list(source.metric_names()))

    async def group(request: web.Request) -> web.Response:
        denied = await authorize(request, "", "")
        version = {"groupVersion": GROUP_VERSION, "version": VERSION}
        return denied or _json(
            {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version], "preferredVersion": version}
        )

    async def metric_values(request: web.Request) -> web.Response:
        namespace, metric = request.match_info["namespace"], request.match_info["metric"]
        denied = await authorize(request, namespace, metric)
        if denied:
            return denied
        raw = request.query.get("labelSelector", "")
        if len(raw) > MAX_SELECTOR_CHARS:
            return status(400, "BadRequest", f"invalid labelSelector: longer than {MAX_SELECTOR_CHARS} characters")
        try:
            selector = parse_selector(raw)
        except SelectorError as exc:
            return status(400, "BadRequest", f"invalid labelSelector: {exc}")
        try:
            items = await source.items(namespace, metric, selector)
        except SourceUnavailable as exc:
            return status(503, "ServiceUnavailable", f"metric source unavailable: {exc}")
        return _json(
            '{"kind":"ExternalMetricValueList","apiVersion":"'
            + GROUP_VERSION
            + '","metadata":{},"items":['
            + ",".join(items)
            + "]}"
        )

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readiness(request: web.Request) -> web.Response:
        return web.Response(text="ok") if ready() else web.Response(status=503, text="no decisions received yet")

    async def not_found(request: web.Request) -> web.Response:
        return status(404, "NotFound", f"the server could not find the requested resource {request.path}")

    app = web.Application()
    app.router.add_get(BASE, discovery)
    app.router.add_get(f"/apis/{GROUP}", group)
    app.router.add_get(BASE + "/namespaces/{namespace}/{metric}", metric_values)
    app.router.add_get("/healthz", health)
    app.router.add_get("/livez", health)
    app.router.add_get("/readyz", readiness)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
