"""The controller's HTTP endpoints are not open to whoever reaches the pod, with the real server
reviewing: /metrics and /invoke need a ServiceAccount token that its TokenReview accepts and
config/'s ClusterRoles on the path (SubjectAccessReview of a non-resource URL); /invoke cannot be
repeated to walk the controller's state; a follower replica runs nothing (moved here from
tests/test_controller_security.py, which keeps the review API failing).
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.controller.server import build_app
from autoscaler.kube_auth import KubernetesReviews, PathGate

from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from .isvc_namespace import CHAT, named, stop

# who may do what: config/'s ClusterRoles, bound to ServiceAccounts of the test's namespace
ROLES = {
    "prometheus": ("inference-autoscaler-metrics-reader",),
    "ops": ("inference-autoscaler-metrics-reader", "inference-autoscaler-invoker"),
    "tenant": (),
}


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def served(namespace):
    plane = namespace.plane
    bindings = []
    tokens = {}
    for account, roles in ROLES.items():
        plane.kubectl("create", "serviceaccount", account, f"--namespace={namespace.name}")
        for role in roles:
            bindings.append(f"{role}-{namespace.name}-{account}")
            plane.kubectl(
                "create", "clusterrolebinding", bindings[-1], f"--clusterrole={role}",
                f"--serviceaccount={namespace.name}:{account}",
            )  # fmt: skip
        tokens[account] = plane.service_account_token(namespace.name, account)
    namespace.create_isvc("chat", CHAT)
    controller = await namespace.controller(StandInCollector({(namespace.name, "chat"): observed(8.0)}))
    gate = PathGate(KubernetesReviews(controller.kube.api))
    client = TestClient(TestServer(build_app(controller, controller.hub, gate.authorize, invoke_min_interval_s=60.0)))
    await client.start_server()
    try:
        yield namespace, controller, client, tokens
    finally:
        await client.close()
        await stop(controller)
        plane.kubectl("delete", "clusterrolebinding", *bindings)


@named("e2e-endpoint-rbac")
async def test_metrics_and_invoke_need_a_reviewed_token_and_rbac(served):
    _, controller, client, tokens = served
    assert (await client.get("/metrics")).status == 401
    assert (await client.post("/invoke")).status == 401
    assert (await client.get("/metrics", headers=bearer("forged"))).status == 401
    assert (await client.get("/metrics", headers=bearer(tokens["tenant"]))).status == 403
    assert (await client.post("/invoke", headers=bearer(tokens["tenant"]))).status == 403
    assert (await client.post("/invoke", headers=bearer(tokens["prometheus"]))).status == 403  # may read, not act
    assert controller.cycles == 0
    assert (await client.get("/metrics", headers=bearer(tokens["prometheus"]))).status == 200
    assert (await client.post("/invoke", headers=bearer(tokens["ops"]))).status == 200
    assert (await client.get("/healthz")).status == 200  # probes need no token


@named("e2e-endpoint-invoke")
async def test_repeated_invoke_runs_one_cycle_per_interval(served):
    namespace, controller, client, tokens = served
    ops = bearer(tokens["ops"])
    responses = await asyncio.gather(*(client.post("/invoke", headers=ops) for _ in range(8)))
    assert sorted(r.status for r in responses) == [200] + [429] * 7
    assert controller.cycles == 1
    decided = namespace.isvc("chat")["metadata"]
    for _ in range(20):  # hammering changes nothing: no cycle, no write
        response = await client.post("/invoke", headers=ops)
        assert response.status == 429 and 1 <= int(response.headers["Retry-After"]) <= 60
    assert controller.cycles == 1 and namespace.isvc("chat")["metadata"]["resourceVersion"] == decided["resourceVersion"]


@named("e2e-endpoint-follower")
async def test_a_follower_runs_nothing_and_is_not_ready(served):
    _, controller, client, tokens = served
    controller.hub.step_down()
    assert (await client.post("/invoke", headers=bearer(tokens["ops"]))).status == 503
    assert (await client.get("/readyz")).status == 503
    assert controller.cycles == 0
