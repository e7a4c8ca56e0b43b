"""A small emulator of the Kubernetes API endpoints the adapter and controller call.

No kube-apiserver can run on these machines, so tests talk to this instead, over real HTTP with
the real request and response shapes of authentication.k8s.io/v1 TokenReview,
authorization.k8s.io/v1 SubjectAccessReview and core/v1 ConfigMap. Behaviour is table-driven:
`tokens` maps a bearer token to a user, `grants` lists who may list which metric where.
Every other path is served by `ObjectStore` (tests/kube_objects.py): create, get, list, watch,
replace, patch and delete of any resource, with resourceVersions and injected faults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from .kube_objects import ObjectStore


@dataclass
class Grant:
    subject: str  # a user name, or "group:NAME"
    resource: str = "*"  # a metric name, or "*"
    namespace: str = "*"
    paths: bool | tuple[str, ...] = True  # non-resource paths: all, none, or these "verb /path" pairs


@dataclass
class KubeApiEmulator:
    tokens: dict[str, dict] = field(default_factory=dict)  # token -> {"username": ..., "groups": [...]}
    grants: list[Grant] = field(default_factory=list)
    configmap: dict[str, str] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: {"tokenreviews": 0, "subjectaccessreviews": 0, "configmaps": 0})
    failing: bool = False  # answer 500 to everything, like an API server in trouble
    store: ObjectStore = field(default_factory=ObjectStore)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", self._token_review)
        app.router.add_post("/apis/authorization.k8s.io/v1/subjectaccessreviews", self._access_review)
        app.router.add_get("/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication", self._configmap)
        self.store.route(app)
        return app

    def _broken(self) -> web.Response | None:
        if self.failing:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "code": 500}
            return web.json_response(body, status=500)
        return None

    async def _token_review(self, request: web.Request) -> web.Response:
        self.calls["tokenreviews"] += 1
        broken = self._broken()
        if broken:
            return broken
        review = await request.json()
        user = self.tokens.get(review["spec"]["token"])
        review["status"] = (
            {"authenticated": True, "user": user} if user else {"authenticated": False, "error": "invalid bearer token"}
        )
        return web.json_response(review, status=201)

    async def _access_review(self, request: web.Request) -> web.Response:
        self.calls["subjectaccessreviews"] += 1
        broken = self._broken()
        if broken:
            return broken
        review = await request.json()
        spec = review["spec"]
        subjects = {spec.get("user")} | {f"group:{g}" for g in spec.get("groups") or ()}
        resource = spec.get("resourceAttributes")
        allowed = False
        for grant in self.grants:
            if grant.subject not in subjects:
                continue
            if resource is None:
                asked = spec.get("nonResourceAttributes") or {}
                pairs = grant.paths if isinstance(grant.paths, tuple) else ()
                allowed = allowed or grant.paths is True or f"{asked.get('verb')} {asked.get('path')}" in pairs
            elif (
                resource.get("verb") == "list"
                and resource.get("group") == "external.metrics.k8s.io"
                and grant.resource in ("*", resource.get("resource"))
                and grant.namespace in ("*", resource.get("namespace"))
            ):
                allowed = True
        review["status"] = {"allowed": allowed, "reason": "" if allowed else "no RBAC policy matched"}
        return web.json_response(review, status=201)

    async def _configmap(self, request: web.Request) -> web.Response:
        self.calls["configmaps"] += 1
        name, namespace = "extension-apiserver-authentication", "kube-system"
        return web.json_response(
            {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": name, "namespace": namespace}, "data": self.configmap}
        )
