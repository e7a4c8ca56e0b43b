"""`inference-autoscaler controller` as a process: a kubeconfig it cannot use is one clear line,
and `write_kubeconfig`, the kubeconfig of the API emulator that the other emulator process tests
use. The process end to end (live Prometheus load, HPA, gRPC stream, reviewed /invoke and
/metrics, the Lease released on SIGTERM) runs against the real kube-apiserver:
tests/e2e/test_controller_process.py."""

from __future__ import annotations

from autoscaler.cli import main


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


def test_a_bad_kubeconfig_is_one_clear_line(tmp_path, capsys):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("clusters: [\n")
    loopback = ["--listen", "127.0.0.1:0", "--decisions-address", "127.0.0.1:0"]
    assert main(["controller", "--kubeconfig", str(kubeconfig), *loopback]) == 2
    error = capsys.readouterr().err
    assert f"inference-autoscaler: error: {kubeconfig}: cannot use it:" in error and "Traceback" not in error
