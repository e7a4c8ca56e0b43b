"""Leader election (autoscaler/leader.py) on a real coordination.k8s.io/v1 Lease, as config/'s
controller ServiceAccount (its Role may create Leases and get and update only the one named
inference-autoscaler-controller), and the failover of two controllers: kill the leader, the
follower takes over within the lease, and no decision is lost or repeated (moved here from
tests/test_leader.py, which keeps the renewal failure the real server cannot inject).

What the real server adds: it validates the MicroTime fields, keeps resourceVersions (of two
candidates racing for one Lease the second write gets a real 409) and refuses any verb the Role
lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from autoscaler.controller.controller import Controller, ControllerSettings
from autoscaler.controller.server import lead
from autoscaler.decision_stream import DecisionHub
from autoscaler.kube import Kube
from autoscaler.leader import JITTER, LeaderElector
from autoscaler.policy.planner import PlannerSettings

from ..test_controller import StandInCollector
from ..test_controller_planning import observed
from ..test_leader import FAST
from .conftest import NAMESPACE, kubectl_json
from .isvc_namespace import CHAT, named, stop
from .test_controller_rbac import settled

LEASE = "inference-autoscaler-controller"  # the one config/'s Role lets the controller update


@pytest.fixture
def plane(deployed):
    """The session's control plane with no Lease of that name (another test's process held it)."""
    deployed.kubectl("delete", "lease", LEASE, f"--namespace={NAMESPACE}", "--ignore-not-found")
    yield deployed
    deployed.kubectl("delete", "lease", LEASE, f"--namespace={NAMESPACE}", "--ignore-not-found")


@contextlib.asynccontextmanager
async def electors(plane, names: str, clocks: list | None = None):
    """One elector per letter of `names`, each with its own API client (and clock, if given), all
    as the controller's ServiceAccount."""
    kubeconfig = str(plane.service_account_kubeconfig(NAMESPACE, "controller"))
    made = []
    try:
        for name, clock in zip(names, clocks or [time.monotonic] * len(names), strict=True):
            made.append(LeaderElector(await Kube.connect(kubeconfig), NAMESPACE, LEASE, name, FAST, monotonic=clock))
        yield made
    finally:
        for e in made:
            await e.kube.close()


class Clock:
    """A candidate's monotonic clock, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spec(plane) -> dict:
    return kubectl_json(plane, "get", "lease", LEASE, f"--namespace={NAMESPACE}")["spec"]


async def test_the_lease_record_follows_client_go(plane):
    a_clock, b_clock = Clock(), Clock()
    async with electors(plane, "ab", [a_clock, b_clock]) as (a, b):
        assert await a.try_acquire_or_renew()
        first = spec(plane)
        assert first["holderIdentity"] == "a" and first["leaseDurationSeconds"] == 2 and first["leaseTransitions"] == 0
        assert first["acquireTime"] == first["renewTime"] and first["renewTime"].endswith("Z")
        assert not await b.try_acquire_or_renew()  # held, and b has only just seen it
        await asyncio.sleep(0.01)
        assert await a.try_acquire_or_renew()  # a renews: renewTime moves, acquireTime stays
        renewed = spec(plane)
        assert renewed["acquireTime"] == first["acquireTime"] and renewed["renewTime"] > first["renewTime"]
        b_clock.now += 10  # b's own clock: the record changed since it last looked, so it waits again
        assert not await b.try_acquire_or_renew()
        b_clock.now += 2.1  # unchanged for longer than the lease by b's clock: a is gone
        assert await b.try_acquire_or_renew()
        taken = spec(plane)
        assert taken["holderIdentity"] == "b" and taken["leaseTransitions"] == 1
        assert taken["acquireTime"] > first["acquireTime"]
        assert not await a.try_acquire_or_renew()  # a's clock has not run: b's record is fresh to it


async def test_of_two_candidates_for_an_expired_lease_one_wins(plane):
    clocks = [Clock(), Clock()]
    async with electors(plane, "a") as (old,), electors(plane, "bc", clocks) as candidates:
        assert await old.try_acquire_or_renew()
        for candidate, clock in zip(candidates, clocks, strict=True):
            assert not await candidate.try_acquire_or_renew()
            clock.now += 5
        won = await asyncio.gather(*(c.try_acquire_or_renew() for c in candidates))
        assert sorted(won) == [False, True]  # the loser's write carried a stale resourceVersion: 409
        assert spec(plane)["leaseTransitions"] == 1


async def test_a_released_lease_passes_at_once(plane):
    async with electors(plane, "ab") as (a, b):
        await a.acquire()
        assert not await b.try_acquire_or_renew()
        await a.release()
        assert spec(plane)["holderIdentity"] == "" and spec(plane)["leaseDurationSeconds"] == 1
        assert await b.try_acquire_or_renew() and not a.is_leader


@named("e2e-failover")
async def test_failover_of_two_controllers_loses_and_repeats_no_decision(plane, namespace):
    namespace.create_isvc("chat", CHAT)
    collector = StandInCollector({(namespace.name, "chat"): observed(12.0, ttft_s=3.0)})
    settings = ControllerSettings(namespace=NAMESPACE, planner=PlannerSettings(period_s=0.5))
    kubeconfig = str(plane.service_account_kubeconfig(NAMESPACE, "controller"))
    replicas = []
    for name in ("a", "b"):
        controller = Controller(await Kube.connect(kubeconfig), collector, DecisionHub(), settings)
        controller.hub.leading = False
        await controller.start(sync_timeout_s=30)
        election = LeaderElector(await Kube.connect(kubeconfig), NAMESPACE, LEASE, name, FAST)
        replicas.append((controller, election, asyncio.create_task(lead(election, controller.hub, [controller.run]))))
    both_led = []

    async def watch_leaders():
        while True:
            both_led.append(all(c.hub.leading for c, _, _ in replicas))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch_leaders())
    try:
        await settled(replicas[0][0], lambda: any(c.cycles >= 2 for c, _, _ in replicas), timeout_s=30)
        leader, follower = replicas if replicas[0][0].cycles >= 2 else replicas[::-1]
        assert follower[0].cycles == 0
        before = namespace.decision("chat")
        killed_at = time.monotonic()
        leader[2].cancel()  # a crash: the Lease is not released
        await asyncio.gather(leader[2], return_exceptions=True)
        await settled(follower[0], lambda: follower[0].hub.leading, timeout_s=10)
        takeover_s = time.monotonic() - killed_at
        await settled(follower[0], lambda: follower[0].cycles >= 2, timeout_s=30)
        follower[2].cancel()
        await asyncio.gather(follower[2], return_exceptions=True)

        print(f"takeover after the leader's crash: {takeover_s:.2f} s (lease {FAST.lease_s} s, retry {FAST.retry_s} s)")
        # the follower sees the last renewal within one retry, waits the lease, notices within one more
        assert takeover_s <= FAST.lease_s + 2 * FAST.retry_s * JITTER + 1.0  # 1 s for a shared, loaded machine
        assert not any(both_led)
        # the follower resumed from the leader's stored decision: the same revision (no roll-out
        # applied again), the same count for the same load, its learned bias carried over
        decided, same = namespace.decision("chat"), ("accelerator", "max_batch", "replicas", "spec_changed_at", "ttft_scale")
        assert {k: decided[k] for k in same} == {k: before[k] for k in same}
        assert spec(plane)["leaseTransitions"] == 1
        assert namespace.exists("hpa", "chat-optimizer")
    finally:
        watcher.cancel()
        for controller, election, task in replicas:
            task.cancel()
            await stop(controller)
            await election.kube.close()
