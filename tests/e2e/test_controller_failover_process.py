"""Two `inference-autoscaler controller` processes against the real kube-apiserver, with the
kubeconfig of config/'s controller ServiceAccount: one leads, the other stands by (not ready); the
leader is killed with SIGKILL (no chance to release its Lease); the standby takes over within the
lease and resumes from the decision stored in the cluster (decision_store.py): the same decision
served, nothing written again (moved here from tests/test_controller_failover_process.py; the
in-process failover of two controllers is tests/e2e/test_leader_lease.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import aiohttp
import grpc

from autoscaler.controller.decision_store import configmap, name_for
from autoscaler.policy.decisions import LastDecision
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc

from ..prometheus_server import free_port
from .conftest import NAMESPACE, kubectl_json
from .isvc_namespace import CHAT, named

LEASE = "inference-autoscaler-controller"
LEASE_S, RETRY_S = 2, 0.2


async def start(kubeconfig, name: str) -> tuple[asyncio.subprocess.Process, str, str]:
    http, stream = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", "controller", "--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE,
        "--prometheus-url", f"http://127.0.0.1:{free_port()}",  # no Prometheus: every cycle keeps the last decision
        "--listen", http, "--decisions-address", stream, "--period", "0.5",
        "--lease-duration", str(LEASE_S), "--renew-deadline", "1", "--retry-period", str(RETRY_S),
        env={**os.environ, "POD_NAME": name}, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return process, f"http://{http}", stream


async def ready(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        async with session.get(base + "/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def served(stream: str, namespace: str) -> list[pb.Decision]:
    async with grpc.aio.insecure_channel(stream) as channel:
        watch = pb_grpc.DecisionServiceStub(channel).WatchDecisions(pb.WatchRequest(client="test"), timeout=5)
        return [d for d in (await watch.read()).snapshot.decisions if d.namespace == namespace]


def written(namespace, isvc_name: str) -> tuple:
    """What the controller writes for an ISVC: its status condition, its stored decision, its HPA's spec."""
    isvc = namespace.isvc(isvc_name)
    conditions = [c for c in isvc.get("status", {}).get("conditions", []) if c["type"] == "AutoscalerDecision"]
    stored = kubectl_json(namespace.plane, "get", "configmap", name_for(isvc["metadata"]["uid"]), f"--namespace={NAMESPACE}")
    hpa = namespace.plane.kubectl(
        "get", "hpa", f"{isvc_name}-optimizer", f"--namespace={namespace.name}", "--ignore-not-found", "--output=json"
    ).stdout
    return conditions, stored["metadata"]["resourceVersion"], hpa and json.loads(hpa)["spec"]


@named("e2e-failover-process")
async def test_the_standby_takes_over_a_killed_leader_and_resumes_from_the_cluster(namespace):
    plane = namespace.plane
    plane.kubectl("delete", "lease", LEASE, f"--namespace={NAMESPACE}", "--ignore-not-found")
    namespace.create_isvc("chat", CHAT)
    decided = LastDecision("H100", 5, 64, 300.0, 20.0, 7.5, 60.0, decided_at=time.time())
    stored = configmap(NAMESPACE, namespace.isvc("chat")["metadata"], decided.to_json())
    plane.kubectl("create", "--filename=-", input=json.dumps(stored))
    kubeconfig = plane.service_account_kubeconfig(NAMESPACE, "controller")
    replicas = {name: await start(kubeconfig, name) for name in ("a", "b")}
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            while not any([await ready(session, base) for _, base, _ in replicas.values()]):
                assert time.monotonic() < deadline, "no replica became leader"
                await asyncio.sleep(0.05)
            holder = kubectl_json(plane, "get", "lease", LEASE, f"--namespace={NAMESPACE}")["spec"]["holderIdentity"]
            leader, _, leader_stream = replicas[holder]
            _, standby_base, standby_stream = replicas["b" if holder == "a" else "a"]
            assert not await ready(session, standby_base)  # the Service routes to the leader only
            [before] = await served(leader_stream, namespace.name)
            assert (before.accelerator, before.desired_replicas) == ("H100", 5)
            first = written(namespace, "chat")  # the leader's first cycle: the HPA, the condition "StaleLoadData"
            assert first[0][0]["reason"] == "StaleLoadData" and first[2], first

            leader.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            await leader.wait()
            while not await ready(session, standby_base):  # ready: it leads and has run a cycle
                assert time.monotonic() - killed_at < 30, "the standby did not take over"
                await asyncio.sleep(0.02)
            takeover_s = time.monotonic() - killed_at
        print(f"takeover after SIGKILL: {takeover_s:.2f} s (lease {LEASE_S} s, retry {RETRY_S} s)")
        assert takeover_s < LEASE_S + 2 * RETRY_S * 1.2 + 2.0  # 2 s: a cycle to readiness on a loaded machine
        [after] = await served(standby_stream, namespace.name)
        assert (after.accelerator, after.desired_replicas, after.max_batch) == ("H100", 5, 64)  # resumed, not lost
        lease = kubectl_json(plane, "get", "lease", LEASE, f"--namespace={NAMESPACE}")["spec"]
        assert lease["holderIdentity"] != holder and lease["leaseTransitions"] == 1
        assert written(namespace, "chat") == first  # the new leader wrote nothing again
    finally:
        for process, _, _ in replicas.values():
            if process.returncode is None:
                process.terminate()
                await process.wait()
        plane.kubectl("delete", "lease", LEASE, f"--namespace={NAMESPACE}", "--ignore-not-found")
