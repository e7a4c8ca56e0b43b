"""Two `inference-autoscaler controller` processes against the Kubernetes API emulator (a real
kube-apiserver fixture is to follow): one leads, the other stands by (not ready); the leader is
killed with SIGKILL (no chance to release its Lease); the standby takes over within the lease
and resumes from the decision stored in the cluster (decision_store.py): the same decision
served, nothing written again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp
import grpc

from autoscaler.controller.decision_store import configmap
from autoscaler.policy.decisions import LastDecision
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc

from .cluster_objects import CONFIGMAPS, ISVCS, NAMESPACE, isvc
from .prometheus_server import free_port
from .test_controller import Cluster
from .test_controller_process import write_kubeconfig
from .test_leader import LEASE

LEASE_S, RETRY_S = 2, 0.2


async def start(cluster: Cluster, kubeconfig, name: str) -> tuple[asyncio.subprocess.Process, str, str]:
    http, stream = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", "controller", "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE,
        "--prometheus-url", f"http://127.0.0.1:{free_port()}",  # no Prometheus: every cycle keeps the last decision
        "--listen", http, "--decisions-address", stream, "--period", "0.5",
        "--lease-duration", str(LEASE_S), "--renew-deadline", "1", "--retry-period", str(RETRY_S),
        env={**os.environ, "POD_NAME": name}, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return process, f"http://{http}", stream


def isvc_writes(cluster: Cluster) -> int:
    return sum(1 for _, _, collection, _ in cluster.store.history if collection == ISVCS)


async def ready(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(base + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def served(stream: str) -> list[pb.Decision]:
    async with grpc.aio.insecure_channel(stream) as channel:
        watch = pb_grpc.DecisionServiceStub(channel).WatchDecisions(pb.WatchRequest(client="test"), timeout=5)
        return list((await watch.read()).snapshot.decisions)


async def test_the_standby_takes_over_a_killed_leader_and_resumes_from_the_cluster(tmp_path):
    async with Cluster() as cluster:
        decided = LastDecision("H100", 5, 64, 300.0, 20.0, 7.5, 60.0, decided_at=time.time())
        chat = isvc("chat", "llama_13b")
        chat["metadata"]["uid"] = "uid-chat"
        cluster.store.put(CONFIGMAPS, configmap(NAMESPACE, chat["metadata"], decided.to_json()))
        cluster.store.put(ISVCS, chat)
        kubeconfig = write_kubeconfig(tmp_path, cluster.url)
        replicas = {name: await start(cluster, kubeconfig, name) for name in ("a", "b")}
        try:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 60
                while not any([await ready(session, base) for _, base, _ in replicas.values()]):
                    assert time.monotonic() < deadline, "no replica became leader"
                    await asyncio.sleep(0.05)
                holder = cluster.store.get(LEASE, NAMESPACE, "inference-autoscaler-controller")["spec"]["holderIdentity"]
                leader, _, leader_stream = replicas[holder]
                _, standby_base, standby_stream = replicas["b" if holder == "a" else "a"]
                assert not await ready(session, standby_base)  # the Service routes to the leader only
                [before] = await served(leader_stream)
                assert (before.accelerator, before.desired_replicas) == ("H100", 5)
                written = isvc_writes(cluster)  # the leader's first cycle: the status condition "StaleLoadData"

                leader.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                await leader.wait()
                while not await ready(session, standby_base):
                    assert time.monotonic() - killed_at < 30, "the standby did not take over"
                    await asyncio.sleep(0.02)
                takeover_s = time.monotonic() - killed_at
            print(f"takeover after SIGKILL: {takeover_s:.2f} s (lease {LEASE_S} s, retry {RETRY_S} s)")
            assert takeover_s < LEASE_S + 2 * RETRY_S * 1.2 + 2.0  # 2 s: a cycle to readiness on a loaded machine
            [after] = await served(standby_stream)
            assert (after.accelerator, after.desired_replicas, after.max_batch) == ("H100", 5, 64)  # resumed, not lost
            lease = cluster.store.get(LEASE, NAMESPACE, "inference-autoscaler-controller")["spec"]
            assert lease["holderIdentity"] != holder and lease["leaseTransitions"] == 1
            assert isvc_writes(cluster) == written  # the new leader wrote nothing again
        finally:
            for process, _, _ in replicas.values():
                if process.returncode is None:
                    process.terminate()
                    await process.wait()
