"""Each service's configuration problems end in one line on stderr and exit code 2 (usage or
configuration) or 69 (a service it needs is unavailable), run as real processes."""

import socket
import subprocess
import sys

import pytest

from autoscaler import __version__

from .certs import Authority
from .prometheus_server import free_port


def run(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "autoscaler", *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    return done.returncode, done.stderr.strip().splitlines()


def one_line(lines: list[str]) -> str:
    assert len(lines) == 1, "\n".join(lines)
    return lines[0]


def last_line(lines: list[str]) -> str:
    """The error after any log lines of retries on the way (no traceback, no leaked session)."""
    text = "\n".join(lines)
    assert "Traceback" not in text and "Unclosed" not in text and " ERROR " not in text, text
    assert lines[-1].startswith("inference-autoscaler: error: "), text
    return lines[-1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = Authority.create("a").issue("localhost", directory / "a", server=True)
    _, other_key = Authority.create("b").issue("localhost", directory / "b", server=True)
    garbage = directory / "garbage.pem"
    garbage.write_text("not a certificate\n")
    unreachable = directory / "unreachable.kubeconfig"
    unreachable.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{free_port()}\n"
        "users:\n- name: u\n  user:\n    token: t\n"
        "contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n"
    )
    broken = directory / "broken.kubeconfig"
    broken.write_text("clusters: [\n")
    return {"cert": cert, "key": key, "other_key": other_key, "garbage": garbage, "unreachable": unreachable, "broken": broken}


def service_args(command: str, port_flag: str, cert, key, *extra) -> list[str]:
    tls = ["--tls-cert-file", str(cert), "--tls-private-key-file", str(key)]
    return [command, port_flag, str(free_port()), "--bind-address", "127.0.0.1", *tls, *extra]


def webhook(cert, key, *extra) -> list[str]:
    return service_args("webhook", "--port", cert, key, *extra)


def adapter(cert, key, *extra) -> list[str]:
    # a plaintext decision stream is allowed on loopback only: these runs are about other settings
    return service_args("metrics-adapter", "--secure-port", cert, key, "--decisions", "127.0.0.1:9090", *extra)


@pytest.mark.parametrize("service", [webhook, adapter])
@pytest.mark.parametrize(
    "cert, key, message",
    [
        ("missing", "key", "missing.pem: file not found"),
        ("cert", "directory", "cannot read: Is a directory"),  # unreadable (root reads any file)
        ("garbage", "key", "garbage.pem: not a PEM certificate"),
        ("cert", "garbage", "garbage.pem: not a PEM private key (or an encrypted one)"),
        ("cert", "other_key", "does not match the certificate"),
    ],
)
def test_tls_file_problems_are_one_line_and_exit_2(files, tmp_path, service, cert, key, message):
    paths = files | {"missing": tmp_path / "missing.pem", "directory": tmp_path}
    code, lines = run(*service(paths[cert], paths[key], "--kubeconfig", str(files["unreachable"])))
    assert code == 2 and message in one_line(lines) and one_line(lines).startswith("inference-autoscaler: error: ")


def services_with(kubeconfig: str):
    """Each service's command line with the kubeconfig named `kubeconfig` in the files fixture."""
    return [
        lambda f: adapter(f["cert"], f["key"], "--kubeconfig", str(f[kubeconfig])),
        lambda f: webhook(
            f["cert"], f["key"], "--manage-certificates", "ns/s", "--services", "w", "--kubeconfig", str(f[kubeconfig])
        ),
        lambda f: [
            "controller",
            "--kubeconfig",
            str(f[kubeconfig]),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--decisions-address",
            f"127.0.0.1:{free_port()}",
        ],  # fmt: skip
    ]


@pytest.mark.parametrize("args", services_with("broken"))
def test_a_bad_kubeconfig_is_one_line_and_exit_2(files, args):
    code, lines = run(*args(files))
    assert code == 2 and "broken.kubeconfig: cannot use it:" in one_line(lines)


@pytest.mark.parametrize("args", services_with("unreachable"))
def test_an_unreachable_api_server_is_one_line_and_exit_69(files, args):
    code, lines = run(*args(files))
    assert code == 69 and "Kubernetes API" in last_line(lines)


def test_a_port_in_use_is_one_line_and_exit_2(files):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        args = webhook(files["cert"], files["key"])
        args[args.index("--port") + 1] = str(port)
        code, lines = run(*args)
    assert code == 2 and f"127.0.0.1:{port}: cannot listen: Address already in use" in one_line(lines)


def test_version():
    done = subprocess.run([sys.executable, "-m", "autoscaler", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"inference-autoscaler {__version__}"
