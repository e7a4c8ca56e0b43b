"""Fixtures of the e2e tests: one real control plane per session (tests/control_plane.py).

If it cannot be built or started on this machine, every e2e test fails with one line saying why:
they are never skipped, since then nothing would show that the project works against a real API
server.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ..certs import Authority
from ..control_plane import ROOT, ControlPlane, ControlPlaneUnavailable, build
from ..prometheus_server import free_port

NAMESPACE = "inference-autoscaler"
# what of config/default is created for real: the identities, their RBAC and the optimizer data.
# The webhook configuration and the APIService would route to Services that run nowhere here;
# the tests register the real processes themselves.
CREATED_FOR_REAL = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap"}


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory):
    try:
        plane = ControlPlane(build(), tmp_path_factory.mktemp("control-plane")).start()
    except ControlPlaneUnavailable as exc:
        unavailable = str(exc)
    else:
        unavailable = ""
    if unavailable:  # failed outside the handler, so pytest prints this one line, not a chain
        pytest.fail(f"the real Kubernetes control plane is unavailable: {unavailable}", pytrace=False)
    yield plane
    plane.stop()


def rendered(plane: ControlPlane, overlay: str) -> list[dict]:
    """config/<overlay> as kustomize (in the kubectl we built) renders it."""
    output = plane.kubectl("kustomize", str(ROOT / "config" / overlay)).stdout
    return [d for d in yaml.safe_load_all(output) if d]


@pytest.fixture(scope="session")
def deployed(control_plane) -> ControlPlane:
    """The control plane with config/default's namespace, ServiceAccounts, RBAC and data applied."""
    objects = [d for d in rendered(control_plane, "default") if d["kind"] in CREATED_FOR_REAL]
    control_plane.kubectl("apply", "--server-side", "--filename=-", input=yaml.safe_dump_all(objects))
    return control_plane


def kubectl_json(plane: ControlPlane, *args: str) -> dict:
    return json.loads(plane.kubectl(*args, "--output=json").stdout)


def problems_in(namespace: str, problems: list[str]) -> list[str]:
    """A cycle report's problems of one test's namespace: ISVCs other tests left behind may still
    be going away (their RoleBinding first), which is not this test's concern."""
    return [p for p in problems if p.startswith(f"{namespace}/") or f" {namespace}/" in p]


def opt_in_namespace(plane: ControlPlane, namespace: str) -> None:
    """A namespace whose ISVCs opt in: created, with config/samples' RoleBinding that lets the
    controller write there (without it the controller only reads)."""
    plane.kubectl("create", "namespace", namespace)
    binding = yaml.safe_load((ROOT / "config" / "samples" / "namespace-rolebinding.yaml").read_text())
    binding["metadata"]["namespace"] = namespace
    plane.kubectl("apply", "--filename=-", input=json.dumps(binding))


@pytest.fixture
def namespace(deployed, gpu_nodes, request):
    """An opted-in namespace for one test (named by isvc_namespace.named), gone after it: the
    next test's cycles would otherwise see (and count) this one's ISVCs."""
    from .isvc_namespace import Namespace  # it builds on this module's helpers

    opt_in_namespace(deployed, request.param)
    yield Namespace(deployed, request.param)
    deployed.kubectl("delete", "namespace", request.param, "--timeout=120s", check=False)


# the session's fake GPU nodes (kwok keeps them Ready): 2 x 8 H100 and 1 x 4 L40S
GPU_NODES = (
    ("gpu-h100-0", "NVIDIA-H100-80GB-HBM3", 8),
    ("gpu-h100-1", "NVIDIA-H100-80GB-HBM3", 8),
    ("gpu-l40s-0", "NVIDIA-L40S", 4),
)


@pytest.fixture(scope="session")
def gpu_nodes(control_plane) -> list[str]:
    for name, product, gpus in GPU_NODES:
        control_plane.add_gpu_node(name, product, gpus)
    names = [name for name, _, _ in GPU_NODES]
    control_plane.kubectl("wait", "--for=condition=Ready", *(f"node/{n}" for n in names), "--timeout=60s")
    return names


@dataclass
class Process:
    """An entry point of ours (python -m autoscaler ...) as a process, its log in a file."""

    process: subprocess.Popen
    log: Path

    @staticmethod
    def start(log: Path, *args: str) -> "Process":
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "autoscaler", *args], stdout=out, stderr=subprocess.STDOUT)
        return Process(process, log)

    def wait_ready(self, url: str, context: ssl.SSLContext | None, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.process.poll() is None, f"{self.log.name} exited: {self.log.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(url, context=context, timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, f"{url} not up: {self.log.read_text()[-2000:]}"
                time.sleep(0.1)

    def stop(self) -> str:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        return self.log.read_text()


@pytest.fixture(scope="module")
def webhook(control_plane, tmp_path_factory):
    """Our admission webhook as a process, registered by config/webhook's MutatingWebhookConfiguration
    with clientConfig.url on 127.0.0.1 and the caBundle of a CA from autoscaler.certificates; per
    module, so that tests applying config/ itself find no configuration of that name."""
    directory = tmp_path_factory.mktemp("webhook")
    ca = Authority.create("webhook-ca")
    cert, key = ca.issue("webhook", directory, server=True)
    port = free_port()
    process = Process.start(
        directory / "webhook.log", "webhook", f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
        "--bind-address=127.0.0.1", f"--port={port}",
    )  # fmt: skip
    context = ssl.create_default_context(cadata=ca.pem)
    process.wait_ready(f"https://127.0.0.1:{port}/healthz", context)
    configuration = yaml.safe_load((ROOT / "config" / "webhook" / "mutatingwebhookconfiguration.yaml").read_text())
    for hook in configuration["webhooks"]:
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": base64.b64encode(ca.pem.encode()).decode()}
    control_plane.kubectl("apply", "--server-side", "--filename=-", input=json.dumps(configuration))
    yield process
    control_plane.kubectl("delete", "mutatingwebhookconfiguration", configuration["metadata"]["name"], check=False)
    log = process.stop()
    assert "Traceback" not in log, log[-3000:]
