"""An in-memory Kubernetes object store behind the API server's REST paths, for tests.

It follows the API server's contracts that the controller relies on: a cluster-wide
resourceVersion that grows with every write; create answers 409 AlreadyExists; a PUT carrying an
outdated resourceVersion answers 409 Conflict; JSON patches (with `test`), merge patches
(strategic merge patches are applied as merge patches: our clients only send maps); a `status`
subresource that alone may write status; generateName; label selectors (equality, `!=`,
existence); watches that replay from a resourceVersion, send BOOKMARKs, and answer an ERROR
event with code 410 once that version has been compacted away. `fail(...)` injects faults.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from .jsonpatch import PatchFailed, apply_patch, merge_patch

Key = tuple[str, str, str]  # collection ("api/v1/pods", "apis/g/v/plural"), namespace, name


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "message": message, "code": code}


def _error(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(status_body(code, reason, message), status=code)


@dataclass
class Fault:
    method: str  # "" for any
    path_contains: str
    status: int
    times: int = 1


def _parse(path: str) -> tuple[str, str | None, str | None, str | None] | None:
    """(collection, namespace, name, subresource) of an API path, or None."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        prefix, rest = "api/v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        prefix, rest = "/".join(parts[:3]), parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return None
    return f"{prefix}/{rest[0]}", namespace, (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)


def _matches(labels: dict, selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class ObjectStore:
    objects: dict[Key, dict] = field(default_factory=dict)
    history: list[tuple[int, str, str, dict]] = field(default_factory=list)  # (version, type, collection, object)
    faults: list[Fault] = field(default_factory=list)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every call
    compacted: int = 0  # watches from versions below this get 410
    _watchers: set[asyncio.Queue] = field(default_factory=set)
    _version: int = 0

    def route(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self.handle)

    # --- direct access for tests (the cluster's other actors: kubelet, scheduler, KServe) ---

    def put(self, collection: str, obj: dict) -> dict:
        """Create or overwrite an object as another actor would; returns the stored copy."""
        meta = obj.setdefault("metadata", {})
        key = (collection, meta.get("namespace", ""), meta["name"])
        return self._write(key, copy.deepcopy(obj), "MODIFIED" if key in self.objects else "ADDED")

    def get(self, collection: str, namespace: str, name: str) -> dict | None:
        return self.objects.get((collection, namespace or "", name))

    def items(self, collection: str) -> list[dict]:
        return [obj for (c, _, _), obj in self.objects.items() if c == collection]

    def remove(self, collection: str, namespace: str, name: str) -> None:
        obj = self.objects.pop((collection, namespace or "", name))
        self._version += 1  # a delete is a change too: a watch resuming from before it must see it
        self._notify("DELETED", collection, obj)

    def fail(self, method: str, path_contains: str, status: int, times: int = 1) -> None:
        self.faults.append(Fault(method, path_contains, status, times))

    def compact(self) -> None:
        """Forget history: watches resuming from an older version get 410 Gone."""
        self.compacted = self._version + 1
        self.history.clear()

    def drop_watches(self) -> None:
        """End every open watch, as an API server restart does; clients must resume."""
        for queue in self._watchers:
            queue.put_nowait(None)

    def calls(self, method: str, path_contains: str = "") -> int:
        return sum(1 for m, p in self.requests if m == method and path_contains in p)

    # --- internals ---

    def _write(self, key: Key, obj: dict, event: str) -> dict:
        self._version += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self._version)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-11-23T00:00:00Z")
        if key[1]:
            meta["namespace"] = key[1]
        self.objects[key] = obj
        self._notify(event, key[0], obj)
        return obj

    def _notify(self, event: str, collection: str, obj: dict) -> None:
        snapshot = copy.deepcopy(obj)
        self.history.append((self._version, event, collection, snapshot))
        for queue in self._watchers:
            queue.put_nowait((self._version, event, collection, snapshot))

    def _fault(self, method: str, path: str) -> web.Response | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method in ("", method) and fault.path_contains in path:
                fault.times -= 1
                reasons = {409: "Conflict", 410: "Gone", 429: "TooManyRequests"}
                return _error(fault.status, reasons.get(fault.status, "InternalError"), "injected fault")
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        fault = self._fault(request.method, request.path)
        if fault is not None:
            return fault
        parsed = _parse(request.path)
        if parsed is None:
            return _error(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        collection, namespace, name, subresource = parsed
        if name is None:
            if request.method == "GET":
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, collection, namespace)
                return self._list(request, collection, namespace)
            if request.method == "POST":
                return self._create(collection, namespace, await request.json())
            return _error(405, "MethodNotAllowed", request.method)
        key = (collection, namespace or "", name)
        current = self.objects.get(key)
        if request.method == "GET":
            return web.json_response(current) if current else _error(404, "NotFound", f'"{name}" not found')
        if current is None:
            return _error(404, "NotFound", f'"{name}" not found')
        if request.method == "DELETE":
            self.remove(collection, namespace, name)
            return web.json_response(current)
        body = await request.json()
        if request.method == "PUT":
            wanted = body.get("metadata", {}).get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                return _error(409, "Conflict", "the object has been modified; please apply your changes to the latest version")
            updated = body
        elif request.method == "PATCH":
            try:
                if request.content_type == "application/json-patch+json":
                    updated = apply_patch(current, body)
                else:
                    updated = merge_patch(current, body)
            except PatchFailed as exc:
                return _error(422, "Invalid", str(exc))
        else:
            return _error(405, "MethodNotAllowed", request.method)
        updated = copy.deepcopy(updated)
        if subresource == "status":
            updated = {**current, "status": updated.get("status")}
        elif "status" in current:
            updated["status"] = current["status"]
        updated["metadata"] = {**updated.get("metadata", {}), "name": name}
        updated["metadata"].pop("resourceVersion", None)
        return web.json_response(self._write(key, updated, "MODIFIED"))

    def _create(self, collection: str, namespace: str | None, body: dict) -> web.Response:
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            return _error(422, "Invalid", "metadata.name: Required value")
        key = (collection, namespace or "", meta["name"])
        if key in self.objects:
            return _error(409, "AlreadyExists", f'"{meta["name"]}" already exists')
        meta.pop("resourceVersion", None)
        return web.json_response(self._write(key, body, "ADDED"), status=201)

    def _selected(self, collection: str, namespace: str | None, selector: str, obj_collection: str, obj: dict) -> bool:
        meta = obj.get("metadata", {})
        return (
            obj_collection == collection
            and (namespace is None or meta.get("namespace") == namespace)
            and _matches(meta.get("labels") or {}, selector)
        )

    def _list(self, request: web.Request, collection: str, namespace: str | None) -> web.Response:
        selector = request.query.get("labelSelector", "")
        items = [obj for (c, _, _), obj in self.objects.items() if self._selected(collection, namespace, selector, c, obj)]
        return web.json_response({"kind": "List", "metadata": {"resourceVersion": str(self._version)}, "items": items})

    async def _watch(self, request: web.Request, collection: str, namespace: str | None) -> web.StreamResponse:
        selector = request.query.get("labelSelector", "")
        since = int(request.query.get("resourceVersion") or self._version)
        timeout = float(request.query.get("timeoutSeconds", 300))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)

        async def send(event: str, obj: dict) -> None:
            await response.write(json.dumps({"type": event, "object": obj}).encode() + b"\n")

        if since < self.compacted:
            await send("ERROR", status_body(410, "Expired", f"too old resource version: {since} ({self.compacted})"))
            return response
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        try:
            for version, event, c, obj in list(self.history):
                if version > since and self._selected(collection, namespace, selector, c, obj):
                    await send(event, obj)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (left := deadline - loop.time()) > 0:
                try:
                    item = await asyncio.wait_for(queue.get(), min(left, 5.0))
                except asyncio.TimeoutError:
                    bookmark = {"kind": "Bookmark", "metadata": {"resourceVersion": str(self._version)}}
                    await send("BOOKMARK", bookmark)
                    continue
                if item is None:
                    break
                version, event, c, obj = item
                if version > since and self._selected(collection, namespace, selector, c, obj):
                    await send(event, obj)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(queue)
        return response
