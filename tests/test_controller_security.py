"""The controller's HTTP endpoints when the review API fails, and its command line: refusals and
the settings it gives.

Who may call /metrics and /invoke (real TokenReviews and SubjectAccessReviews under config/'s
ClusterRoles), the /invoke rate limit and a follower's refusal are tested against the real
kube-apiserver in tests/e2e/test_controller_endpoints.py. Here, on the API emulator
(tests/kube_api_emulator.py), only the review API answering 500, which a real server will not do
on cue: the endpoints must answer 503, never let the caller through."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.cli import build_parser, main
from autoscaler.controller.server import build_app, settings
from autoscaler.kube_auth import KubernetesReviews, PathGate

from .cluster_objects import ISVCS, isvc
from .kube_api_emulator import Grant
from .test_controller import Cluster, StandInCollector, stop
from .test_controller_planning import observed

TOKENS = {"prometheus-token": {"username": "system:serviceaccount:monitoring:prometheus"}}
GRANTS = [Grant("system:serviceaccount:monitoring:prometheus", resource="", paths=("get /metrics",))]


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


async def test_a_failing_review_api_is_a_503_not_a_pass(served):
    """emulator: the real API server cannot be made to answer 500 to TokenReviews."""
    cluster, _, client = served
    assert (await client.get("/metrics", headers=bearer("prometheus-token"))).status == 200
    cluster.emulator.failing = True
    assert (await client.get("/metrics", headers=bearer("new-token"))).status == 503
    assert (await client.get("/healthz")).status == 200


def test_a_negative_invoke_interval_is_refused(capsys):
    loopback = ["--listen", "127.0.0.1:0", "--decisions-address", "127.0.0.1:0"]
    assert main(["controller", *loopback, "--invoke-min-interval", "-1"]) == 2
    assert "--invoke-min-interval: must be 0 or more seconds" in capsys.readouterr().err
    for flag, value, problem in (
        ("--period", "0", "must be more than 0 seconds"),
        ("--queue-probe", "nan", "must be more than 0 seconds"),
        ("--startup-seconds", "-1", "must be 0 or more seconds"),
        ("--scrape-interval", "-5", "must be 0 or more seconds"),
        ("--itl-metric", "vllm:x[1m]) or vector(1", "is not a Prometheus metric name"),  # goes into PromQL
    ):
        assert main(["controller", *loopback, flag, value]) == 2
        assert f"{flag}: {problem}" in capsys.readouterr().err


def test_the_command_line_says_whether_the_router_balances_by_load():
    """--load-aware-router reaches the planner (a fleet is then sized as pooling its queues);
    without it each replica is sized for a Poisson share, as behind kube-proxy."""
    parser = build_parser("controller")
    _, default = settings(parser.parse_args(["controller", "--period", "20", "--startup-seconds", "90"]))
    assert not default.planner.load_aware_router
    assert (default.planner.period_s, default.planner.startup_s) == (20.0, 90.0)
    _, pooled = settings(parser.parse_args(["controller", "--load-aware-router"]))
    assert pooled.planner.load_aware_router


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
