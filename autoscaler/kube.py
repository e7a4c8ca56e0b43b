"""The thin Kubernetes I/O of the controller: generic REST calls, retries, and watched caches.

Objects stay plain JSON dicts (kubernetes_asyncio's typed models cost milliseconds per object to
build, which a 1,000-ISVC cycle cannot afford); kubernetes_asyncio supplies configuration,
authentication and the HTTP session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from .errors import ApiError, InputError

log = logging.getLogger(__name__)
T = TypeVar("T")

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core API
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        parts = ["/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{namespace}")
        parts.append(self.plural)
        if name:
            parts.append(name)
            if subresource:
                parts.append(subresource)
        return "/".join(parts)


INFERENCE_SERVICES = Resource("serving.kserve.io", "v1beta1", "inferenceservices")
POD_AUTOSCALERS = Resource("autoscaling.internal.knative.dev", "v1alpha1", "podautoscalers")
SERVERLESS_SERVICES = Resource("networking.internal.knative.dev", "v1alpha1", "serverlessservices")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers")
CONFIG_MAPS = Resource("", "v1", "configmaps")
NODES = Resource("", "v1", "nodes", namespaced=False)
PODS = Resource("", "v1", "pods")
EVENTS = Resource("", "v1", "events")
SECRETS = Resource("", "v1", "secrets")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
MUTATING_WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", namespaced=False)
API_SERVICES = Resource("apiregistration.k8s.io", "v1", "apiservices", namespaced=False)


def _api_error(exc: ApiException) -> ApiError:
    try:
        message = json.loads(exc.body or "{}").get("message") or exc.reason
    except (ValueError, AttributeError):
        message = exc.reason
    return ApiError(exc.status or 0, str(message))


class Kube:
    def __init__(self, api_client: client.ApiClient):
        self.api = api_client

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> "Kube":
        """In-cluster service account, else the kubeconfig file (KUBECONFIG or ~/.kube/config)."""
        configuration = client.Configuration()
        if kubeconfig is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
                return cls(client.ApiClient(configuration))
            except config.ConfigException:
                pass
        try:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except (config.ConfigException, OSError, yaml.YAMLError, TypeError, ValueError) as exc:
            source = kubeconfig or "kubeconfig (KUBECONFIG or ~/.kube/config; not running in a cluster)"
            raise InputError(source, "", f"cannot use it: {str(exc).splitlines()[0] or exc.__class__.__name__}") from None
        return cls(client.ApiClient(configuration))

    @property
    def host(self) -> str:
        return self.api.configuration.host

    @classmethod
    def at(cls, host: str) -> "Kube":
        """An unauthenticated client of `host` (an API emulator in tests and benchmarks)."""
        configuration = client.Configuration(host=host)
        return cls(client.ApiClient(configuration))

    async def close(self) -> None:
        await self.api.close()

    async def request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
    ) -> dict:
        try:
            return await self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=timeout_s,
            )
        except ApiException as exc:
            raise _api_error(exc) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ApiError(0, f"{method} {path}: {exc.__class__.__name__}: {exc}") from None

    async def get(self, resource: Resource, namespace: str | None, name: str) -> dict:
        return await self.request("GET", resource.path(namespace, name))

    async def find(self, resource: Resource, namespace: str | None, name: str) -> dict | None:
        """get, with None for an object that does not exist (yet)."""
        try:
            return await self.get(resource, namespace, name)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return None

    async def list(self, resource: Resource, namespace: str | None = None, label_selector: str = "") -> dict:
        query = {"labelSelector": label_selector} if label_selector else None
        return await self.request("GET", resource.path(namespace), query=query)

    async def create(self, resource: Resource, namespace: str | None, body: dict) -> dict:
        return await self.request("POST", resource.path(namespace), body=body)

    async def replace(self, resource: Resource, namespace: str | None, name: str, body: dict, subresource: str | None = None):
        return await self.request("PUT", resource.path(namespace, name, subresource), body=body)

    async def patch(
        self, resource: Resource, namespace: str | None, name: str, body: Any, subresource: str | None = None
    ) -> dict:
        """A JSON merge patch (a dict) or a JSON patch (a list of operations)."""
        content_type = JSON_PATCH if isinstance(body, list) else MERGE_PATCH
        return await self.request("PATCH", resource.path(namespace, name, subresource), body=body, content_type=content_type)

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> dict:
        return await self.request("DELETE", resource.path(namespace, name))

    async def watch(
        self,
        resource: Resource,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str = "",
        timeout_s: int = 300,
    ) -> AsyncIterator[dict]:
        """Watch events after `resource_version`; ends when the server closes the stream."""
        query = {"watch": "true", "resourceVersion": resource_version, "timeoutSeconds": timeout_s, "allowWatchBookmarks": "true"}
        if label_selector:
            query["labelSelector"] = label_selector
        try:
            response = await self.api.call_api(
                resource.path(namespace),
                "GET",
                query_params=list(query.items()),
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=aiohttp.ClientTimeout(sock_connect=10, sock_read=timeout_s + 30),
            )
        except ApiException as exc:
            raise _api_error(exc) from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ApiError(0, f"watch {resource.plural}: {exc}") from None
        async with response:
            if response.status != 200:  # unread by the client when streaming: a Status body
                try:
                    message = (await response.json(content_type=None)).get("message", response.reason)
                except (ValueError, aiohttp.ClientError):
                    message = response.reason
                raise ApiError(response.status, str(message))
            try:
                async for line in response.content:
                    if line.strip():
                        yield json.loads(line)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise ApiError(0, f"watch {resource.plural} broke: {exc}") from None


def backoff_delays(base_s: float = 0.2, cap_s: float = 30.0) -> Callable[[int], float]:
    """Exponential backoff with full jitter, so that many retrying callers do not move in step."""
    return lambda attempt: random.uniform(0, min(cap_s, base_s * 2**attempt))


async def with_retries(call: Callable[[], Awaitable[T]], what: str, attempts: int = 5, base_s: float = 0.2) -> T:
    """Run `call` again on conflicts, throttling, server errors and lost connections.

    On a 409 the call itself must re-read what it changes: every attempt runs it from the start.
    """
    delay = backoff_delays(base_s)
    for attempt in range(attempts):
        try:
            return await call()
        except ApiError as exc:
            if not exc.retriable or attempt == attempts - 1:
                raise
            log.info("%s: %s; retrying", what, exc)
            await asyncio.sleep(delay(attempt))
    raise AssertionError("unreachable")


def object_key(obj: dict) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return metadata.get("namespace", ""), metadata.get("name", "")


class Informer:
    """A watched cache of one resource: list, then watch from the list's resourceVersion.

    A 410 Gone (the watch fell too far behind) lists again; any other failure backs off and
    resumes.
    """

    def __init__(self, kube: Kube, resource: Resource, namespace: str | None = None, label_selector: str = ""):
        self.kube = kube
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.objects: dict[tuple[str, str], dict] = {}
        self.synced = asyncio.Event()
        self.relists = 0
        self.listeners: list[Callable[[str, dict], None]] = []  # called with each watch event (type, object)

    def _apply(self, event_type: str, obj: dict) -> None:
        key = object_key(obj)
        if event_type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        for listener in self.listeners:
            listener(event_type, obj)

    async def _list(self) -> str:
        listing = await self.kube.list(self.resource, self.namespace, self.label_selector)
        self.objects = {object_key(item): item for item in listing.get("items") or []}
        self.relists += 1
        self.synced.set()
        return (listing.get("metadata") or {}).get("resourceVersion", "")

    async def run(self) -> None:
        delay = backoff_delays(0.2, 10.0)
        failures = 0
        version = ""
        while True:
            try:
                if not version:
                    version = await self._list()
                async for event in self.kube.watch(self.resource, version, self.namespace, self.label_selector):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        raise ApiError(int(obj.get("code") or 0), obj.get("message", "watch error"))
                    version = (obj.get("metadata") or {}).get("resourceVersion", version)
                    if event.get("type") != "BOOKMARK":
                        self._apply(event["type"], obj)
                failures = 0
            except ApiError as exc:
                if exc.status == 410:
                    log.info("watch of %s expired; listing again", self.resource.plural)
                    version = ""
                    continue
                failures += 1
                log.warning("watch of %s failed (%s); resuming", self.resource.plural, exc)
                if exc.status not in (0, 429) and exc.status < 500:
                    version = ""
                await asyncio.sleep(delay(min(failures, 6)))
