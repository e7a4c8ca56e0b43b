"""Leader election on a coordination.k8s.io/v1 Lease (autoscaler/leader.py) against the API
emulator (tests/kube_api_emulator.py; a real kube-apiserver fixture is to follow), and the
failover of two controllers: kill the leader, the follower takes over within the lease, and no
decision is lost or repeated (it resumes from the cluster). The metrics adapter has no leader:
two replicas fed by one controller answer the same."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp.test_utils import TestClient, TestServer

from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.controller.server import lead
from autoscaler.decision_stream import DecisionHub, serve_decisions
from autoscaler.kube import Kube
from autoscaler.leader import JITTER, ElectionSettings, LeaderElector
from autoscaler.policy.planner import PlannerSettings
from metrics_adapter.api import BASE, build_app
from metrics_adapter.feed import DecisionFeed
from metrics_adapter.store import MetricStore

from .cluster_objects import HPAS, ISVCS, NAMESPACE, isvc, stored_decision
from .kube_objects import Fault
from .test_controller import Cluster, StandInCollector, stop
from .test_controller_planning import observed
from .test_decision_stream import decision

LEASE = "apis/coordination.k8s.io/v1/leases"
FAST = ElectionSettings(lease_s=2.0, renew_deadline_s=1.0, retry_s=0.2)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(cluster: Cluster, identity: str, settings=FAST, clock=time.monotonic) -> LeaderElector:
    return LeaderElector(Kube.at(cluster.url), NAMESPACE, "controller", identity, settings, monotonic=clock)


@contextlib.asynccontextmanager
async def electors(cluster: Cluster, names: str, clocks: list | None = None):
    """One elector per letter of `names`, each with its own API client (and clock, if given)."""
    made = [elector(cluster, n, clock=c) for n, c in zip(names, clocks or [time.monotonic] * len(names), strict=True)]
    try:
        yield made
    finally:
        for e in made:
            await e.kube.close()


def spec(cluster: Cluster) -> dict:
    return cluster.store.get(LEASE, NAMESPACE, "controller")["spec"]


async def test_the_lease_record_follows_client_go():
    async with Cluster() as cluster:
        a_clock, b_clock = Clock(), Clock()
        async with electors(cluster, "ab", [a_clock, b_clock]) as (a, b):
            assert await a.try_acquire_or_renew()
            first = spec(cluster)
            assert first["holderIdentity"] == "a" and first["leaseDurationSeconds"] == 2 and first["leaseTransitions"] == 0
            assert first["acquireTime"] == first["renewTime"] and first["renewTime"].endswith("Z")
            assert not await b.try_acquire_or_renew()  # held, and b has only just seen it
            await asyncio.sleep(0.01)
            assert await a.try_acquire_or_renew()  # a renews: renewTime moves, acquireTime stays
            renewed = spec(cluster)
            assert renewed["acquireTime"] == first["acquireTime"] and renewed["renewTime"] > first["renewTime"]
            b_clock.now += 10  # b's own clock: the record changed since it last looked, so it waits again
            assert not await b.try_acquire_or_renew()
            b_clock.now += 2.1  # unchanged for longer than the lease by b's clock: a is gone
            assert await b.try_acquire_or_renew()
            taken = spec(cluster)
            assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1
            assert taken["acquireTime"] > first["acquireTime"]
            assert not await a.try_acquire_or_renew()  # a's clock has not run: b's record is fresh to it


async def test_of_two_candidates_for_an_expired_lease_one_wins():
    async with Cluster() as cluster:
        clocks = [Clock(), Clock()]
        async with electors(cluster, "a") as (old,), electors(cluster, "bc", clocks) as candidates:
            assert await old.try_acquire_or_renew()
            for candidate, clock in zip(candidates, clocks, strict=True):
                assert not await candidate.try_acquire_or_renew()
                clock.now += 5
            won = await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates))
            assert sorted(won) == [False, True]  # the loser's write carried a stale resourceVersion: 409
            assert spec(cluster)["leaseTransitions"] == 1


async def test_a_released_lease_passes_at_once():
    async with Cluster() as cluster:
        async with electors(cluster, "ab") as (a, b):
            await a.acquire()
            assert not await b.try_acquire_or_renew()
            await a.release()
            assert spec(cluster)["holderIdentity"] == "" and spec(cluster)["leaseDurationSeconds"] == 1
            assert await b.try_acquire_or_renew() and not a.is_leader


async def test_a_leader_that_cannot_renew_steps_down_before_the_lease_ends():
    async with Cluster() as cluster:
        async with electors(cluster, "a") as (a,):
            await a.acquire()
            keeping = asyncio.create_task(a.keep())
            cluster.store.faults.append(Fault("", "/leases/", 500, times=1000))  # the API cannot answer a
            started = time.monotonic()
            await asyncio.wait_for(keeping, 5)
            stepped_down = time.monotonic() - started
            assert not a.is_leader and FAST.renew_deadline_s <= stepped_down < FAST.lease_s


async def test_failover_of_two_controllers_loses_and_repeats_no_decision():
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        collector = StandInCollector({("prod", "chat"): observed(12.0, ttft_s=3.0)})
        settings = ControllerSettings(namespace=NAMESPACE, planner=PlannerSettings(period_s=0.5))
        replicas = []
        for name in ("a", "b"):
            controller = Controller(Kube.at(cluster.url), collector, DecisionHub(), settings)
            controller.hub.leading = False
            await controller.start(sync_timeout_s=10)
            election = elector(cluster, name)
            replicas.append((controller, election, asyncio.create_task(lead(election, controller.hub, [controller.run]))))
        both_led = []

        async def watch_leaders():
            while True:
                both_led.append(all(c.hub.leading for c, _, _ in replicas))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_leaders())
        try:
            await cluster.settle(replicas[0][0], lambda: any(c.cycles >= 2 for c, _, _ in replicas), timeout_s=10)
            leader, follower = replicas if replicas[0][0].cycles >= 2 else replicas[::-1]
            assert follower[0].cycles == 0
            before = stored_decision(cluster.store, cluster.isvc("chat"))
            killed_at = time.monotonic()
            leader[2].cancel()  # a crash: the Lease is not released
            await asyncio.gather(leader[2], return_exceptions=True)
            await cluster.settle(follower[0], lambda: follower[0].hub.leading, timeout_s=10)
            takeover_s = time.monotonic() - killed_at
            await cluster.settle(follower[0], lambda: follower[0].cycles >= 2, timeout_s=10)
            follower[2].cancel()
            await asyncio.gather(follower[2], return_exceptions=True)

            print(f"takeover after the leader's crash: {takeover_s:.2f} s (lease {FAST.lease_s} s, retry {FAST.retry_s} s)")
            # the follower sees the last renewal within one retry, waits the lease, notices within one more retry
            assert takeover_s <= FAST.lease_s + 2 * FAST.retry_s * JITTER + 1.0  # 1 s for a shared, loaded machine
            assert not any(both_led)
            # the follower resumed from the leader's stored decision: the same revision (no roll-out
            # applied again), the same count for the same load, its learned bias carried over
            decided = stored_decision(cluster.store, cluster.isvc("chat"))
            same = ("accelerator", "max_batch", "replicas", "spec_changed_at", "ttft_scale")
            assert {k: decided[k] for k in same} == {k: before[k] for k in same}
            assert spec(cluster)["leaseTransitions"] == 1
            assert cluster.store.get(HPAS, "prod", "chat-optimizer") is not None
        finally:
            watcher.cancel()
            for controller, _, task in replicas:
                task.cancel()
                await stop(controller)


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
