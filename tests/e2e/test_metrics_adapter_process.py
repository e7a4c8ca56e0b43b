"""`inference-autoscaler metrics-adapter` as a real process with the kubeconfig of config/'s
metrics-adapter ServiceAccount: the front-proxy CA read from the real server's
kube-system/extension-apiserver-authentication, not ready until the controller's DecisionService
answers, then serving its decisions to a caller with the aggregator's certificate, reviewed by
the real server; and following the controller's stream over mutual TLS (moved here from
tests/test_metrics_adapter_process.py and tests/test_decision_stream_tls.py; the aggregated path
and the real HPA are tests/e2e/test_metrics_adapter_aggregated.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import urllib.error
import urllib.request

from autoscaler import certificates
from autoscaler.decision_stream import DecisionHub, serve_decisions
from autoscaler.proto import decisions_pb2 as pb
from metrics_adapter.api import BASE

from ..certs import Authority
from ..prometheus_server import free_port
from ..test_decision_stream import decision as stream_decision
from ..test_decision_stream_tls import peer
from .conftest import NAMESPACE, Process


def get(url: str, context: ssl.SSLContext, headers: dict | None = None) -> tuple[int, dict]:
    """The status and the JSON body, if any; 0 while nothing listens."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), context=context, timeout=5) as r:
            return r.status, json.loads(r.read()) if r.headers.get_content_type() == "application/json" else {}
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, OSError):
        return 0, {}


async def until(status, expected: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (await asyncio.to_thread(status))[0] != expected:
        assert time.monotonic() < deadline, f"never {expected}"
        await asyncio.sleep(0.1)


async def test_adapter_process_is_ready_once_the_controller_answers_and_serves_its_decisions(deployed, tmp_path):
    plane = deployed
    ca = certificates.Authority.create("metrics-adapter-ca", days=1)
    cert, key = ca.issue("metrics-adapter", ["localhost", "127.0.0.1"], days=1)
    (tmp_path / "tls.crt").write_text(cert)
    (tmp_path / "tls.key").write_text(key)
    grpc_port, port = free_port(), free_port()
    process = Process.start(
        tmp_path / "adapter.log", "metrics-adapter", f"--secure-port={port}", "--bind-address=127.0.0.1",
        f"--tls-cert-file={tmp_path / 'tls.crt'}", f"--tls-private-key-file={tmp_path / 'tls.key'}",
        f"--decisions=127.0.0.1:{grpc_port}",
        f"--kubeconfig={plane.service_account_kubeconfig(NAMESPACE, 'metrics-adapter')}",
    )  # fmt: skip
    trusting = ssl.create_default_context(cadata=ca.pem)
    # the aggregator: the real server's front-proxy client certificate and the HPA controller's identity
    aggregator = ssl.create_default_context(cadata=ca.pem)
    aggregator.load_cert_chain(plane.pki.path("front-proxy-client.crt"), plane.pki.path("front-proxy-client.key"))
    as_hpa = {
        "X-Remote-User": "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        "X-Remote-Group": "system:serviceaccounts",
    }
    url = f"https://127.0.0.1:{port}"
    server = None
    try:
        await until(lambda: get(url + "/readyz", trusting), 503)  # up, but the controller is not reachable yet
        hub = DecisionHub()
        decision = pb.Decision(
            namespace="e2e-adapter", isvc="chat", accelerator="H100", desired_replicas=4, decided_at=time.time()
        )
        hub.publish([decision])
        server = await serve_decisions(hub, f"127.0.0.1:{grpc_port}")
        await until(lambda: get(url + "/readyz", trusting), 200)
        metric = url + BASE + "/namespaces/e2e-adapter/desired_replicas?labelSelector=isvc%3Dchat"
        code, body = await asyncio.to_thread(get, metric, aggregator, as_hpa)
        assert code == 200 and [i["value"] for i in body["items"]] == ["4"]
        assert (await asyncio.to_thread(get, metric, trusting, as_hpa))[0] == 401  # the headers, without the certificate
    finally:
        if server is not None:
            await server.stop(None)
        log = process.stop()
    assert process.process.returncode == 0 and "Traceback" not in log, log[-2000:]


async def test_adapter_process_follows_the_stream_over_mutual_tls(deployed, tmp_path):
    """`metrics-adapter --decisions-ca-file`: its serving pair is its client certificate to the
    controller's stream (moved here from tests/test_decision_stream_tls.py)."""
    ca = Authority.create("inference-autoscaler-ca")
    cert, key = ca.issue("metrics-adapter", tmp_path / "adapter", peer=True)
    controller_tls = peer(ca, "controller", tmp_path / "controller", server=True)
    hub = DecisionHub()
    hub.publish([stream_decision()])
    server = await serve_decisions(hub, "127.0.0.1:0", controller_tls)
    port = free_port()
    process = Process.start(
        tmp_path / "adapter.log", "metrics-adapter", f"--secure-port={port}", "--bind-address=127.0.0.1",
        f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
        f"--decisions=localhost:{server.bound_port}", f"--decisions-ca-file={controller_tls.ca_file}",
        f"--kubeconfig={deployed.service_account_kubeconfig(NAMESPACE, 'metrics-adapter')}",
    )  # fmt: skip
    try:  # ready once the first snapshot has come over the stream
        await until(lambda: get(f"https://127.0.0.1:{port}/readyz", ssl.create_default_context(cadata=ca.pem)), 200)
    finally:
        await server.stop(None)
        log = process.stop()
    assert process.process.returncode == 0 and "Traceback" not in log, log[-2000:]
