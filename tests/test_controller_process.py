"""`inference-autoscaler controller` as a real process: kubeconfig to the Kubernetes API emulator
(tests/kube_api_emulator.py, as no kube-apiserver runs here), live vLLM load from a real
Prometheus, the HPA written, decisions on its gRPC DecisionService (mutual TLS), /invoke and
/metrics over HTTPS with a reviewed token, a clean exit on SIGTERM (the Lease released)."""

from __future__ import annotations

import asyncio
import ssl
import sys

import aiohttp
import grpc

from autoscaler.cli import main
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc

from .certs import Authority
from .cluster_objects import HPAS, ISVCS, isvc
from .kube_api_emulator import Grant
from .prometheus_server import free_port
from .test_controller import Cluster
from .test_leader import LEASE
from .test_controller import vllm_and_prometheus  # noqa: F401 - the fixture


def write_kubeconfig(directory, server: str):
    """A kubeconfig for the API emulator at `server` (it takes any token)."""
    path = directory / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters:\n- name: test\n  cluster:\n    server: {server}\n"
        "users:\n- name: controller\n  user:\n    token: controller-token\n"
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: controller\n"
    )
    return path


async def test_controller_process_end_to_end(tmp_path, vllm_and_prometheus):  # noqa: F811
    _, prometheus = vllm_and_prometheus
    async with Cluster() as cluster:
        cluster.store.put(ISVCS, isvc("chat", "llama_13b"))
        cluster.emulator.tokens["ops-token"] = {"username": "ops"}
        cluster.emulator.grants.append(Grant("ops", resource="", paths=("get /metrics", "post /invoke")))
        ops = {"Authorization": "Bearer ops-token"}
        kubeconfig = write_kubeconfig(tmp_path, cluster.url)
        ca = Authority.create("inference-autoscaler-ca")
        cert, key = ca.issue("localhost", tmp_path / "controller", server=True)
        client_cert, client_key = ca.issue("metrics-adapter", tmp_path / "adapter")
        (tmp_path / "ca.crt").write_text(ca.pem)
        http_port, grpc_port = free_port(), free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "autoscaler", "controller", "--kubeconfig", str(kubeconfig),
            "--tls-cert-file", str(cert), "--tls-private-key-file", str(key), "--client-ca-file", str(tmp_path / "ca.crt"),
            "--namespace", "inference-autoscaler", "--prometheus-url", prometheus.url, "--window", "5",
            "--listen", f"127.0.0.1:{http_port}", "--decisions-address", f"127.0.0.1:{grpc_port}", "--period", "3600",
            "--invoke-min-interval", "0", "--retry-period", "0.2", "--renew-deadline", "1", "--lease-duration", "2",
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        base = f"https://127.0.0.1:{http_port}"
        try:
            trusting = aiohttp.TCPConnector(ssl=ssl.create_default_context(cadata=ca.pem))
            async with aiohttp.ClientSession(connector=trusting) as session:
                for _ in range(300):
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
                        assert response.status == 200 and report["services"] == 1, report
                    if report["stale"] == 0:
                        break
                    await asyncio.sleep(0.5)
                assert report["stale"] == 0, report
                async with session.get(base + "/metrics", headers=ops) as response:
                    assert 'inference_autoscaler_desired_replicas{namespace="prod",isvc="chat"' in await response.text()
            assert cluster.store.get(HPAS, "prod", "chat-optimizer") is not None
            credentials = grpc.ssl_channel_credentials(ca.pem.encode(), client_key.read_bytes(), client_cert.read_bytes())
            options = [("grpc.ssl_target_name_override", "localhost")]
            async with grpc.aio.secure_channel(f"127.0.0.1:{grpc_port}", credentials, options) as channel:
                stream = pb_grpc.DecisionServiceStub(channel).WatchDecisions(pb.WatchRequest(client="test"))
                first = await stream.read()
                [decision] = first.snapshot.decisions
                assert decision.isvc == "chat" and decision.desired_replicas >= 1 and decision.arrival_rate > 0
                stream.cancel()
        finally:
            process.terminate()
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()[-2000:]
        assert b"Traceback" not in stderr
        assert cluster.store.get(LEASE, "inference-autoscaler", "inference-autoscaler-controller")["spec"]["holderIdentity"] == ""


def test_a_bad_kubeconfig_is_one_clear_line(tmp_path, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("clusters: [\n")
    loopback = ["--listen", "127.0.0.1:0", "--decisions-address", "127.0.0.1:0"]
    assert main(["controller", "--kubeconfig", str(kubeconfig), *loopback]) == 2
    error = capsys.readouterr().err
    assert f"inference-autoscaler: error: {kubeconfig}: cannot use it:" in error and "Traceback" not in error
