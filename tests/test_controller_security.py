"""The controller's HTTP endpoints are not open to whoever reaches the pod: /metrics and /invoke
need a bearer token that a TokenReview accepts and RBAC on the path (SubjectAccessReview), as
the API emulator (tests/kube_api_emulator.py) answers them; /invoke cannot be repeated to walk
the controller's state; a follower replica runs nothing; plaintext only on loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.cli import main
from autoscaler.controller.server import build_app
from autoscaler.kube_auth import KubernetesReviews, PathGate

from .cluster_objects import ISVCS, isvc
from .kube_api_emulator import Grant
from .test_controller import Cluster, StandInCollector, stop
from .test_controller_planning import observed

TOKENS = {
    "prometheus-token": {"username": "system:serviceaccount:monitoring:prometheus"},
    "ops-token": {"username": "ops"},
    "tenant-token": {"username": "tenant"},
}
GRANTS = [
    Grant("system:serviceaccount:monitoring:prometheus", resource="", paths=("get /metrics",)),
    Grant("ops", resource="", paths=("get /metrics", "post /invoke")),
]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def served():
    async with Cluster() as cluster:
        cluster.emulator.tokens.update(TOKENS)
        cluster.emulator.grants.extend(GRANTS)
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        controller = await cluster.controller(StandInCollector({("prod", "chat"): observed(8.0)}))
        gate = PathGate(KubernetesReviews(controller.kube.api))
        client = TestClient(TestServer(build_app(controller, controller.hub, gate.authorize, invoke_min_interval_s=60.0)))
        await client.start_server()
        try:
            yield cluster, controller, client
        finally:
            await client.close()
            await stop(controller)


async def test_metrics_and_invoke_need_a_reviewed_token_and_rbac(served):
    cluster, controller, client = served
    assert (await client.get("/metrics")).status == 401
    assert (await client.post("/invoke")).status == 401
    assert (await client.get("/metrics", headers=bearer("forged"))).status == 401
    assert (await client.get("/metrics", headers=bearer("tenant-token"))).status == 403
    assert (await client.post("/invoke", headers=bearer("tenant-token"))).status == 403
    assert (await client.post("/invoke", headers=bearer("prometheus-token"))).status == 403  # may read, not act
    assert controller.cycles == 0
    assert (await client.get("/metrics", headers=bearer("prometheus-token"))).status == 200
    assert (await client.post("/invoke", headers=bearer("ops-token"))).status == 200
    assert (await client.get("/healthz")).status == 200  # probes need no token
    cluster.emulator.failing = True  # the review API is down: 503, not a pass
    assert (await client.get("/metrics", headers=bearer("new-token"))).status == 503


async def test_repeated_invoke_runs_one_cycle_per_interval(served):
    cluster, controller, client = served
    responses = await asyncio.gather(*(client.post("/invoke", headers=bearer("ops-token")) for _ in range(8)))
    assert sorted(r.status for r in responses) == [200] + [429] * 7
    assert controller.cycles == 1
    decided = cluster.isvc("chat")["metadata"]["annotations"]
    for _ in range(20):  # hammering changes nothing: no cycle, no write
        response = await client.post("/invoke", headers=bearer("ops-token"))
        assert response.status == 429 and 1 <= int(response.headers["Retry-After"]) <= 60
    assert controller.cycles == 1 and cluster.isvc("chat")["metadata"]["annotations"] == decided


async def test_a_follower_runs_nothing_and_is_not_ready(served):
    _, controller, client = served
    controller.hub.step_down()
    assert (await client.post("/invoke", headers=bearer("ops-token"))).status == 503
    assert (await client.get("/readyz")).status == 503
    assert controller.cycles == 0


def test_a_negative_invoke_interval_is_refused(capsys):
    loopback = ["--listen", "127.0.0.1:0", "--decisions-address", "127.0.0.1:0"]
    assert main(["controller", *loopback, "--invoke-min-interval", "-1"]) == 2
    assert "--invoke-min-interval: must be 0 or more seconds" in capsys.readouterr().err
    for flag, value, problem in (
        ("--period", "0", "must be more than 0 seconds"),
        ("--queue-probe", "nan", "must be more than 0 seconds"),
        ("--startup-seconds", "-1", "must be 0 or more seconds"),
    ):
        assert main(["controller", *loopback, flag, value]) == 2
        assert f"{flag}: {problem}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags",
    [
        ["--listen", "0.0.0.0:8443", "--decisions-address", "127.0.0.1:0"],
        ["--listen", "127.0.0.1:0", "--decisions-address", "0.0.0.0:9090"],
    ],
)
def test_no_plaintext_off_loopback(flags, capsys):
    assert main(["controller", *flags]) == 2
    error = capsys.readouterr().err
    assert "plaintext only on loopback" in error and "Traceback" not in error
