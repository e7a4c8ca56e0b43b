"""How long a standby controller takes to lead after the leader crashes, at the shipped election
settings (lease 15 s, renew deadline 10 s, retry 2 s).

Run: python benchmarks/failover.py [--runs 3]

Two electors (autoscaler/leader.py) on the Kubernetes API emulator of tests/: one leads and
renews, the other waits; after a random 4-8 s the leader stops without releasing the Lease (a
crash), and the time until the standby holds it is printed per run. Expected: between the lease
less one retry (the last renewal came before the crash) and the lease plus two jittered retries
(19.8 s).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscaler.kube import Kube  # noqa: E402
from autoscaler.leader import ElectionSettings, LeaderElector  # noqa: E402
from tests.cluster_objects import NAMESPACE  # noqa: E402
from tests.test_controller import Cluster  # noqa: E402


async def takeover_s() -> float:
    async with Cluster() as cluster:
        leader, standby = (LeaderElector(Kube.at(cluster.url), NAMESPACE, "controller", n, ElectionSettings()) for n in "ab")
        try:
            await leader.acquire()
            renewing = asyncio.create_task(leader.keep())
            waiting = asyncio.create_task(standby.acquire())
            await asyncio.sleep(random.uniform(4, 8))
            renewing.cancel()  # the crash: no release
            crashed = time.monotonic()
            await waiting
            return time.monotonic() - crashed
        finally:
            await leader.kube.close()
            await standby.kube.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    settings = ElectionSettings()
    print(f"lease {settings.lease_s:g} s, renew deadline {settings.renew_deadline_s:g} s, retry {settings.retry_s:g} s")
    for run in range(args.runs):
        print(f"run {run + 1}: standby leads {asyncio.run(takeover_s()):.2f} s after the crash")


if __name__ == "__main__":
    main()
