"""`inference-autoscaler metrics-adapter` as a real process: kubeconfig to the Kubernetes API
emulator (tests/kube_api_emulator.py, as no kube-apiserver runs here), decisions from a live
DecisionService, answers over HTTPS, readiness once the first snapshot has arrived."""

import asyncio
import sys
import time

import aiohttp

from autoscaler.decision_stream import DecisionHub, serve_decisions
from autoscaler.proto import decisions_pb2 as pb
from metrics_adapter.api import BASE

from .prometheus_server import free_port
from .test_metrics_adapter_https import Cluster, serve


async def test_adapter_process_serves_decisions(tmp_path):
    cluster = Cluster(tmp_path)
    api_runner, api_port = await serve(cluster.emulator.app())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{api_port}\n"
        "users:\n- name: adapter\n  user:\n    token: adapter-token\n"
        "contexts:\n- name: test\n  context:\n    cluster: test\n    user: adapter\n"
    )
    hub = DecisionHub()
    grpc_port, port = free_port(), free_port()
    grpc_server = None
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", "metrics-adapter", "--secure-port", str(port), "--bind-address", "127.0.0.1",
        "--tls-cert-file", str(cluster.cert), "--tls-private-key-file", str(cluster.key),
        "--decisions", f"127.0.0.1:{grpc_port}", "--kubeconfig", str(kubeconfig),
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    cluster.url = f"https://127.0.0.1:{port}"
    try:

        async def readiness() -> int:
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(cluster.url + "/readyz", ssl=cluster.client_context()) as response:
                        return response.status
            except aiohttp.ClientError:
                return 0

        for _ in range(200):
            if await readiness() == 503:
                break
            await asyncio.sleep(0.05)
        assert await readiness() == 503  # up, but the controller is not reachable yet: not ready
        hub.publish(
            [
                pb.Decision(
                    namespace="prod", isvc="chat", model="m", accelerator="H100", desired_replicas=4, decided_at=time.time()
                )
            ]
        )
        grpc_server = await serve_decisions(hub, f"127.0.0.1:{grpc_port}")
        for _ in range(200):
            if await readiness() == 200:
                break
            await asyncio.sleep(0.05)
        code, _, body = await cluster.as_hpa(BASE + "/namespaces/prod/desired_replicas?labelSelector=isvc%3Dchat")
        assert code == 200 and [i["value"] for i in body["items"]] == ["4"]
    finally:
        process.terminate()
        _, stderr = await process.communicate()
        if grpc_server is not None:
            await grpc_server.stop(None)
        await api_runner.cleanup()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
