"""`inference-autoscaler controller` as a real process against the real kube-apiserver, with the
kubeconfig of config/'s controller ServiceAccount: live vLLM load from a real Prometheus, the HPA
written, decisions on its gRPC DecisionService (mutual TLS), /invoke and /metrics over HTTPS with
a token the real server reviews, a clean exit on SIGTERM with the Lease released (moved here from
tests/test_controller_process.py). It runs with `--load-aware-router`, the one setting the
in-process controllers of the other tests leave at its default: the flag is parsed and checked by
`server.settings` (tests/test_controller_security.py), and here its planner decides through it.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import aiohttp
import grpc

from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc

from ..certs import Authority
from ..prometheus_server import free_port
from ..test_controller import vllm_and_prometheus  # noqa: F401 - the fixture
from .conftest import NAMESPACE, kubectl_json
from .isvc_namespace import CHAT, named

LEASE = "inference-autoscaler-controller"


@named("prod")  # the namespace tests/vllm_emulator.py labels its load with
async def test_controller_process_end_to_end(tmp_path, namespace, vllm_and_prometheus):  # noqa: F811
    plane = namespace.plane
    _, prometheus = vllm_and_prometheus
    plane.kubectl("delete", "lease", LEASE, f"--namespace={NAMESPACE}", "--ignore-not-found")
    namespace.create_isvc("chat", CHAT)
    plane.kubectl("create", "serviceaccount", "ops", f"--namespace={namespace.name}")
    binding = f"inference-autoscaler-invoker-{namespace.name}"
    plane.kubectl(
        "create", "clusterrolebinding", binding, "--clusterrole=inference-autoscaler-invoker",
        f"--serviceaccount={namespace.name}:ops",
    )  # fmt: skip
    # /metrics: the reader role config/ binds to Prometheus, here to ops as well
    plane.kubectl(
        "create", "clusterrolebinding", f"{binding}-metrics", "--clusterrole=inference-autoscaler-metrics-reader",
        f"--serviceaccount={namespace.name}:ops",
    )  # fmt: skip
    ops = {"Authorization": f"Bearer {plane.service_account_token(namespace.name, 'ops')}"}
    kubeconfig = plane.service_account_kubeconfig(NAMESPACE, "controller")
    ca = Authority.create("inference-autoscaler-ca")
    cert, key = ca.issue("localhost", tmp_path / "controller", server=True)
    client_cert, client_key = ca.issue("metrics-adapter", tmp_path / "adapter")
    (tmp_path / "ca.crt").write_text(ca.pem)
    http_port, grpc_port = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", "controller", "--kubeconfig", str(kubeconfig),
        "--tls-cert-file", str(cert), "--tls-private-key-file", str(key), "--client-ca-file", str(tmp_path / "ca.crt"),
        "--namespace", NAMESPACE, "--prometheus-url", prometheus.url, "--window", "5",
        "--listen", f"127.0.0.1:{http_port}", "--decisions-address", f"127.0.0.1:{grpc_port}", "--period", "3600",
        "--invoke-min-interval", "0", "--retry-period", "0.2", "--renew-deadline", "1", "--lease-duration", "2",
        "--load-aware-router", stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"https://127.0.0.1:{http_port}"
    try:
        trusting = aiohttp.TCPConnector(ssl=ssl.create_default_context(cadata=ca.pem))
        async with aiohttp.ClientSession(connector=trusting) as session:
            for _ in range(600):
                try:
                    async with session.get(base + "/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            for _ in range(40):  # until Prometheus has scraped two samples in the 5 s window
                async with session.post(base + "/invoke", headers=ops) as response:
                    report = await response.json()
                    assert response.status == 200 and report["services"] >= 1, report
                if report["stale"] == 0:
                    break
                await asyncio.sleep(0.5)
            assert report["stale"] == 0, report
            async with session.get(base + "/metrics", headers=ops) as response:
                assert 'inference_autoscaler_desired_replicas{namespace="prod",isvc="chat"' in await response.text()
        assert namespace.exists("hpa", "chat-optimizer")
        credentials = grpc.ssl_channel_credentials(ca.pem.encode(), client_key.read_bytes(), client_cert.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{grpc_port}", credentials, options) as channel:
            stream = pb_grpc.DecisionServiceStub(channel).WatchDecisions(pb.WatchRequest(client="test"))
            first = await stream.read()
            [decision] = [d for d in first.snapshot.decisions if d.namespace == namespace.name]
            assert decision.isvc == "chat" and decision.desired_replicas >= 1 and decision.arrival_rate > 0
            stream.cancel()
    finally:
        process.terminate()
        _, stderr = await process.communicate()
        plane.kubectl("delete", "clusterrolebinding", binding, f"{binding}-metrics")
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
    assert kubectl_json(plane, "get", "lease", LEASE, f"--namespace={NAMESPACE}")["spec"]["holderIdentity"] == ""
