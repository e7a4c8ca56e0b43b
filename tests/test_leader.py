"""Leader election where the API must fail on purpose, and the metrics adapter's replicas.

The Lease record, the race for an expired Lease, the release and the failover of two controllers
run against the real kube-apiserver (tests/e2e/test_leader_lease.py). Here, on the API emulator
(tests/kube_api_emulator.py), only a leader whose renewals fail: the real server cannot be made
to answer 500 to one client's Lease writes. The metrics adapter has no leader: two replicas fed
by one controller answer the same."""

from __future__ import annotations

import asyncio
import time

from aiohttp.test_utils import TestClient, TestServer

from autoscaler.decision_stream import DecisionHub, serve_decisions
from autoscaler.kube import Kube
from autoscaler.leader import ElectionSettings, LeaderElector
from metrics_adapter.api import BASE, build_app
from metrics_adapter.feed import DecisionFeed
from metrics_adapter.store import MetricStore

from .cluster_objects import NAMESPACE
from .kube_objects import Fault
from .test_controller import Cluster
from .test_decision_stream import decision

LEASE = "apis/coordination.k8s.io/v1/leases"
FAST = ElectionSettings(lease_s=2.0, renew_deadline_s=1.0, retry_s=0.2)


async def test_a_leader_that_cannot_renew_steps_down_before_the_lease_ends():
    """emulator: the real API server cannot be made to answer 500 to a Lease's renewals."""
    async with Cluster() as cluster:
        a = LeaderElector(Kube.at(cluster.url), NAMESPACE, "controller", "a", FAST)
        try:
            await a.acquire()
            keeping = asyncio.create_task(a.keep())
            cluster.store.faults.append(Fault("", "/leases/", 500, times=1000))  # the API cannot answer a
            started = time.monotonic()
            await asyncio.wait_for(keeping, 5)
            stepped_down = time.monotonic() - started
            assert not a.is_leader and FAST.renew_deadline_s <= stepped_down < FAST.lease_s
        finally:
            await a.kube.close()


async def test_two_adapter_replicas_serve_the_same_answers():
    hub = DecisionHub()
    hub.publish([decision(), decision("code", 1, "A100"), decision("chat", 2, revision="chat-00002")])
    server = await serve_decisions(hub, "127.0.0.1:0")
    replicas = []
    for _ in range(2):  # no election among adapters: each follows the stream on its own
        store = MetricStore(stale_after_s=60, max_age_s=300, clock=lambda: 1_800_000_000.0)
        feed = DecisionFeed(f"127.0.0.1:{server.bound_port}", store, initial_backoff_s=0.05)
        task = asyncio.create_task(feed.run())
        client = TestClient(TestServer(build_app(store, lambda *_: _allowed())))
        await client.start_server()
        replicas.append((feed, task, client))
    paths = [
        BASE,
        BASE + "/namespaces/prod/desired_replicas",
        BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc%3Dchat",
        BASE + "/namespaces/prod/cost_per_hour?labelSelector=accelerator%3DA100",
        BASE + "/namespaces/other/desired_replicas",
    ]

    async def answers(client) -> list:
        return [(r.status, await r.json()) for r in [await client.get(p) for p in paths]]

    try:
        for feed, _, _ in replicas:
            await asyncio.wait_for(feed.synced.wait(), 10)
        first, second = [await answers(client) for _, _, client in replicas]
        assert first == second and first[1][0] == 200 and len(first[1][1]["items"]) == 3
        hub.publish([decision(replicas=7)])
        await asyncio.sleep(0.3)
        first, second = [await answers(client) for _, _, client in replicas]
        assert first == second and [i["value"] for i in first[1][1]["items"]] == ["7"]
    finally:
        for _, task, client in replicas:
            task.cancel()
            await client.close()
        await server.stop(None)


async def _allowed():
    return None
