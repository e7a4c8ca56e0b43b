"""Leader election on a coordination.k8s.io/v1 Lease, so that of several controller replicas one
decides and the others stand by with warm caches.

The protocol is client-go's (tools/leaderelection), which every Kubernetes controller speaks:
- the Lease's spec holds holderIdentity, leaseDurationSeconds, acquireTime, renewTime and
  leaseTransitions; every write carries the resourceVersion read, so of two candidates racing
  for an expired Lease one gets 409 Conflict and stays a follower;
- a follower takes the Lease once it has seen the same record, unchanged, for
  leaseDurationSeconds by its own monotonic clock (not the holder's renewTime: no trust in
  clocks agreeing across nodes), or at once when holderIdentity is empty (released);
- the leader renews every retry period; when it has not renewed for renew_deadline it stops
  leading, before any follower may take over (renew_deadline < lease), and the process exits
  so that nothing of the old term runs on (a restarted replica resumes from the cluster);
- on a clean shutdown the leader releases the Lease (empty holder, 1 s) for an instant handover.

Defaults: lease 15 s, renew deadline 10 s, retry 2 s (kube-controller-manager's values): a
crashed leader is replaced within lease + two retries (a follower sees the last renewal within
one, then waits the lease, then notices within one more): at most 15 + 2 x 2.4 = 19.8 s with
jitter; a shut-down one (Lease released) within one retry.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from .kube import ApiError, Kube, Resource

log = logging.getLogger(__name__)
LEASES = Resource("coordination.k8s.io", "v1", "leases")
JITTER = 1.2  # followers retry within [retry, 1.2 retry] (client-go's JitterFactor), so candidates drift apart


@dataclass(frozen=True)
class ElectionSettings:
    lease_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_s: float = 2.0

    def __post_init__(self):
        if not 0 < self.retry_s < self.renew_deadline_s < self.lease_s:
            raise ValueError("leader election needs 0 < retry period < renew deadline < lease duration")


def micro_time(wall: float) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds, UTC."""
    return datetime.datetime.fromtimestamp(wall, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        settings: ElectionSettings = ElectionSettings(),
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.settings = settings
        self.monotonic, self.wall = monotonic, wall
        self._observed: dict = {}  # the Lease's spec as last read or written
        self._observed_version = ""
        self._observed_at = 0.0  # our monotonic time when the spec last changed
        self.renewed_at = 0.0  # monotonic time of our last successful acquire or renew
        self.leading = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    def _valid(self, now: float) -> bool:
        return now < self._observed_at + float(self._observed.get("leaseDurationSeconds") or 0)

    def _observe(self, lease: dict) -> None:
        spec, version = lease.get("spec") or {}, lease["metadata"].get("resourceVersion", "")
        if spec != self._observed:
            self._observed_at = self.monotonic()
        self._observed, self._observed_version = spec, version

    def _spec(self, acquire_time: str, transitions: int, holder: str | None = None, duration_s: int | None = None) -> dict:
        now = micro_time(self.wall())
        return {
            "holderIdentity": self.identity if holder is None else holder,
            # whole seconds in the API: rounded up, never shorter than the renew deadline allows for
            "leaseDurationSeconds": math.ceil(self.settings.lease_s) if duration_s is None else duration_s,
            "acquireTime": acquire_time or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def try_acquire_or_renew(self) -> bool:
        """One attempt; True when we hold the Lease afterwards. API errors count as a failed
        attempt (the loops retry), never as holding it."""
        try:
            return await self._attempt()
        except ApiError as exc:
            log.warning("leader election: Lease %s/%s: %s", self.namespace, self.name, exc)
            return False

    async def _attempt(self) -> bool:
        lease = await self.kube.find(LEASES, self.namespace, self.name)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec("", 0),
            }
            self._observe(await self.kube.create(LEASES, self.namespace, body))  # a racing candidate: 409
            return True
        self._observe(lease)
        holder = self._observed.get("holderIdentity") or ""
        mine = holder == self.identity
        if holder and not mine and self._valid(self.monotonic()):
            return False  # held by another and not expired
        transitions = int(self._observed.get("leaseTransitions") or 0)
        spec = self._spec(self._observed.get("acquireTime", ""), transitions) if mine else self._spec("", transitions + 1)
        lease["spec"] = spec
        lease["metadata"]["resourceVersion"] = self._observed_version  # optimistic: 409 if it moved
        self._observe(await self.kube.replace(LEASES, self.namespace, self.name, lease))
        return True

    async def acquire(self) -> None:
        """Return once we lead."""
        while not await self.try_acquire_or_renew():
            await asyncio.sleep(self.settings.retry_s * random.uniform(1.0, JITTER))
        self.renewed_at = self.monotonic()
        self.leading.set()
        log.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)

    async def keep(self) -> None:
        """Renew every retry period; return when a renewal has not succeeded for renew_deadline
        (we no longer lead: stop acting at once)."""
        while True:
            await asyncio.sleep(self.settings.retry_s)
            if await self.try_acquire_or_renew():
                self.renewed_at = self.monotonic()
            elif self._observed.get("holderIdentity") not in ("", self.identity) or (
                self.monotonic() - self.renewed_at >= self.settings.renew_deadline_s
            ):
                self.leading.clear()
                log.error("leader election: %s lost the Lease %s/%s", self.identity, self.namespace, self.name)
                return

    async def release(self) -> None:
        """Hand the Lease over now (on a clean shutdown): empty holder, 1 s duration."""
        if not self.is_leader:
            return
        self.leading.clear()
        try:
            lease = await self.kube.get(LEASES, self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            transitions = int(lease["spec"].get("leaseTransitions") or 0)
            lease["spec"] = self._spec(lease["spec"].get("acquireTime", ""), transitions, holder="", duration_s=1)
            await self.kube.replace(LEASES, self.namespace, self.name, lease)
        except ApiError as exc:
            log.warning("leader election: could not release the Lease (it expires by itself): %s", exc)
