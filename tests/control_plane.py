"""A real Kubernetes control plane as local processes, for the e2e tests (tests/e2e/).

etcd, kube-apiserver, kube-controller-manager and kube-scheduler built from their Go modules by
hack/control-plane/build.sh (cached per version outside the repository), and kwok as the kubelet
of fake GPU nodes: it marks bound pods Running and Ready and finishes their deletion. Everything
listens on 127.0.0.1 only. The API server has what a kubeadm cluster has where our components
touch it: its own CA and client certificates, service-account token signing, RBAC, and the
front-proxy (request-header) CA with the aggregator's proxy client certificate, so aggregated APIs
and admission webhooks are reached exactly as in a cluster. The upstream KServe and Knative CRDs
(../shared/upstream-crds/) are installed so their real schemas validate what we write.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from autoscaler import certificates

from .prometheus_server import free_port

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "hack" / "control-plane" / "build.sh"
UPSTREAM_CRDS = ROOT.parent / "shared" / "upstream-crds"
FAKE_NODE = ("kwok.x-k8s.io/node", "fake")  # the annotation kwok manages nodes by
SERVICE_CIDR = "10.96.0.0/16"
# HPA behavior.*.tolerance as on Kubernetes 1.33-1.34 (alpha, off): the server drops the field we
# write, which a controller must not take for a difference to write again every cycle
FEATURE_GATES = "--feature-gates=HPAConfigurableTolerance=false"


class ControlPlaneUnavailable(RuntimeError):
    """The control plane could not be built or started: one line saying why."""


def build(*extras: str) -> Path:
    """The directory of the control-plane binaries (or of `extras`: knative, kserve, keda), built on first use
    (see the README for the time and disk this takes)."""
    try:
        result = subprocess.run([str(BUILD), *extras], capture_output=True, text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ControlPlaneUnavailable(f"{BUILD} did not run: {exc}") from None
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip() and "go: downloading" not in line]
        raise ControlPlaneUnavailable(f"{BUILD} failed (exit {result.returncode}): {' | '.join(lines[-3:])}")
    return Path(result.stdout.strip().splitlines()[-1])


def _client_cert(ca: certificates.Authority, cn: str, groups: tuple[str, ...], directory: Path) -> tuple[Path, Path]:
    """A client certificate with Kubernetes groups (the certificate's organizations), which
    autoscaler.certificates does not issue since none of our components needs one."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups] + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{cn}.crt", directory / f"{cn}.key"
    cert_path.write_text(certificates.pem(cert))
    key_path.write_text(certificates.key_pem(key))
    return cert_path, key_path


@dataclass
class Pki:
    directory: Path
    ca: certificates.Authority = field(init=False)
    front_proxy_ca: certificates.Authority = field(init=False)

    def __post_init__(self) -> None:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        self.ca = certificates.Authority.create("kubernetes", days=2)
        self.front_proxy_ca = certificates.Authority.create("front-proxy-ca", days=2)
        (d / "ca.crt").write_text(self.ca.pem)
        (d / "front-proxy-ca.crt").write_text(self.front_proxy_ca.pem)
        cert, key = self.ca.issue("kube-apiserver", ["localhost", "127.0.0.1", "10.96.0.1", "kubernetes.default.svc"], days=2)
        (d / "apiserver.crt").write_text(cert)
        (d / "apiserver.key").write_text(key)
        _client_cert(self.ca, "admin", ("system:masters",), d)
        # the aggregator's identity towards aggregated API servers (and the allowed name they check)
        _client_cert(self.front_proxy_ca, "front-proxy-client", (), d)
        sa_key = ec.generate_private_key(ec.SECP256R1())
        (d / "sa.key").write_text(certificates.key_pem(sa_key))
        (d / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    def path(self, name: str) -> str:
        return str(self.directory / name)


def kubeconfig(path: Path, server: str, ca_file: str, user: dict) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "e2e",
                "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca_file}}],
                "users": [{"name": "user", "user": user}],
                "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "user"}}],
            }
        )
    )
    return path


class ControlPlane:
    def __init__(self, bin_dir: Path, directory: Path):
        self.bin = bin_dir
        self.directory = directory
        self.logs = directory / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(directory / "pki")
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.admin_kubeconfig = kubeconfig(
            directory / "admin.kubeconfig",
            self.url,
            self.pki.path("ca.crt"),
            {"client-certificate": self.pki.path("admin.crt"), "client-key": self.pki.path("admin.key")},
        )
        self.processes: dict[str, subprocess.Popen] = {}
        self._ssl = ssl.create_default_context(cafile=self.pki.path("ca.crt"))
        self._ssl.load_cert_chain(self.pki.path("admin.crt"), self.pki.path("admin.key"))

    # processes -----------------------------------------------------------------------------

    def _spawn(self, name: str, *args: str, directory: Path | None = None, env: dict | None = None) -> None:
        log = open(self.logs / f"{name}.log", "wb")
        binary = (directory or self.bin) / name
        self.processes[name] = subprocess.Popen([str(binary), *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def log_tail(self, name: str, lines: int = 5) -> str:
        try:
            return " | ".join((self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait(self, name: str, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                raise ControlPlaneUnavailable(f"{name} exited ({process.returncode}): {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise ControlPlaneUnavailable(f"{name} not ready after {timeout_s:.0f} s: {self.log_tail(name)}")
            time.sleep(0.2)

    def start(self) -> "ControlPlane":
        try:
            self._start_etcd()
            self._start_apiserver()
            self._start_controllers()
            self.install_upstream_crds()
        except AssertionError as exc:  # kubectl failed
            self.stop()
            raise ControlPlaneUnavailable(str(exc)) from None
        except BaseException:
            self.stop()
            raise
        return self

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            "--name=e2e",
            f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=e2e=http://127.0.0.1:{peer}",
            "--unsafe-no-fsync",  # throw-away data: no fsync on a shared disk
            "--log-level=warn",
        )
        self._wait("etcd", lambda: self._http_ok(self.etcd_url + "/health"), 60)

    def _start_apiserver(self) -> None:
        p = self.pki.path
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={p('apiserver.crt')}",
            f"--tls-private-key-file={p('apiserver.key')}",
            f"--client-ca-file={p('ca.crt')}",
            "--authorization-mode=RBAC",
            # it taints every new Node not-ready, which only the node lifecycle controller (off:
            # kwok's nodes have no kubelet heartbeat worth judging) would lift
            "--disable-admission-plugins=TaintNodesByCondition",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p('sa.pub')}",
            f"--service-account-signing-key-file={p('sa.key')}",
            # the aggregation layer: requests proxied to aggregated API servers carry the user in
            # X-Remote-* headers, believed only from the front-proxy client certificate
            f"--requestheader-client-ca-file={p('front-proxy-ca.crt')}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p('front-proxy-client.crt')}",
            f"--proxy-client-key-file={p('front-proxy-client.key')}",
            "--profiling=false",
            FEATURE_GATES,
            "--v=1",
        )
        self._wait("kube-apiserver", lambda: self._http_ok(self.url + "/readyz"), 120)

    def _start_controllers(self) -> None:
        admin = str(self.admin_kubeconfig)
        # both as the admin, serving their own HTTPS endpoints on loopback, alone (no election)
        common = (
            f"--kubeconfig={admin}",
            f"--authentication-kubeconfig={admin}",
            f"--authorization-kubeconfig={admin}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
        )
        self._spawn(
            "kube-controller-manager",
            *common,
            f"--secure-port={free_port()}",
            # fake nodes have no kubelet heartbeat worth judging and no pod CIDRs to hand out
            "--controllers=*,-node-lifecycle-controller,-node-ipam-controller",
            "--horizontal-pod-autoscaler-sync-period=1s",
            # each controller as its own ServiceAccount (as kubeadm runs it), so the HPA controller
            # reads external metrics with the RBAC config/ grants it
            "--use-service-account-credentials=true",
            f"--root-ca-file={self.pki.path('ca.crt')}",
            f"--service-account-private-key-file={self.pki.path('sa.key')}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            FEATURE_GATES,
            "--v=1",
        )
        self._spawn("kube-scheduler", *common, f"--secure-port={free_port()}", "--v=1")
        self._spawn(
            "kwok",
            f"--kubeconfig={admin}",
            f"--config={self.bin / 'kwok-stages.yaml'}",
            f"--manage-nodes-with-annotation-selector={FAKE_NODE[0]}={FAKE_NODE[1]}",
            "--cidr=10.244.0.0/16",
            "--node-ip=127.0.0.1",
            f"--server-address=127.0.0.1:{free_port()}",
        )
        # the default ServiceAccount every namespace needs before pods can be created there
        self._wait("kube-controller-manager", lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"), 90)

    def start_knative_serving(self, directory: Path) -> None:
        """The Knative Serving controller (built by `build.sh knative` into `directory`, with the
        CRDs and ConfigMaps of the same module versions), as the admin."""
        self.kubectl("apply", "--server-side", "--force-conflicts", f"--filename={directory / 'knative-serving-crds.yaml'}")
        self.kubectl("wait", "--for=condition=Established", "--all", "crd", "--timeout=60s")
        self.kubectl("apply", "--server-side", "--force-conflicts", f"--filename={directory / 'knative-serving-config.yaml'}")
        # the activator's Endpoints, which the SKS reconciler reads; empty: no activator runs, so
        # every SKS is served by its pods (Serve mode)
        self.request(
            "POST",
            "/api/v1/namespaces/knative-serving/endpoints",
            {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "activator-service", "namespace": "knative-serving"}},
        )
        self._start_knative_webhook(directory)
        env = dict(os.environ, SYSTEM_NAMESPACE="knative-serving", POD_NAME="knative-serving-controller")
        self._spawn("knative-serving-controller", f"--kubeconfig={self.admin_kubeconfig}", directory=directory, env=env)

    def _start_knative_webhook(self, directory: Path) -> None:
        """Knative's webhook, which defaults and validates every Knative object (KServe's Knative
        Service, our SKS) and ConfigMap: it makes its own certificate into the Secret
        webhook-certs and puts its CA and path into its three webhook configurations, which name
        the Service `webhook`: ExternalName to this host, as there is no kube-proxy, on a free port
        (the API server checks the certificate for webhook.knative-serving.svc all the same)."""
        port = free_port()
        objects = [d for d in yaml.safe_load_all((directory / "knative-serving-webhooks.yaml").read_text()) if d]
        for configuration in objects:
            for hook in configuration.get("webhooks", []):
                hook["clientConfig"]["service"]["port"] = port
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "webhook", "namespace": "knative-serving"},
                "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"port": port, "name": "https"}]},
            }
        )
        self.kubectl("apply", "--server-side", "--filename=-", input=yaml.safe_dump_all(objects))
        env = dict(
            os.environ,
            SYSTEM_NAMESPACE="knative-serving",
            POD_NAME="knative-serving-webhook",
            WEBHOOK_NAME="webhook",  # the Service its certificate is for
            WEBHOOK_PORT=str(port),
            PROFILING_PORT=str(free_port()),
        )
        self._spawn("knative-serving-webhook", f"--kubeconfig={self.admin_kubeconfig}", directory=directory, env=env)
        names = [c["metadata"]["name"] for c in objects if c["kind"].endswith("WebhookConfiguration")]

        def configured() -> bool:  # the webhook listens and every configuration has its CA
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
            found = self.kubectl("get", "mutatingwebhookconfigurations,validatingwebhookconfigurations", "--output=json")
            bundles = {
                c["metadata"]["name"]: c["webhooks"][0]["clientConfig"].get("caBundle") for c in json.loads(found.stdout)["items"]
            }
            return all(bundles.get(name) for name in names)

        self._wait("knative-serving-webhook", configured, 60)

    def start_kserve(self, directory: Path) -> None:
        """KServe's manager (built by `build.sh kserve` into `directory`, with its CRDs) as the
        admin, configured by ../shared's inferenceservice-config; its own webhooks are not
        registered (their server still needs a certificate to start). KEDA's ScaledObject CRD
        (`build.sh keda`) is installed first, as in a cluster with KEDA: KServe watches ScaledObjects
        only when the CRD is there at its start. Once per control plane: later calls find it running."""
        if "kserve-manager" in self.processes:
            return
        self.install_scaledobject_crd()
        self.kubectl("create", "namespace", "kserve")
        self.kubectl("apply", "--server-side", "--force-conflicts", f"--filename={directory / 'kserve-crds.yaml'}")
        self.kubectl("wait", "--for=condition=Established", "--all", "crd", "--timeout=60s")
        config = UPSTREAM_CRDS / "kserve-v0.20.0" / "inferenceservice-config.yaml"
        self.kubectl("apply", "--server-side", f"--filename={config}")
        tmp = self.directory / "kserve-tmp"  # controller-runtime's certificate folder is under TMPDIR
        certs = tmp / "k8s-webhook-server" / "serving-certs"
        certs.mkdir(parents=True)
        cert, key = self.pki.ca.issue("kserve-webhook", ["localhost", "127.0.0.1"], days=2)
        (certs / "tls.crt").write_text(cert)
        (certs / "tls.key").write_text(key)
        env = dict(os.environ, KUBECONFIG=str(self.admin_kubeconfig), TMPDIR=str(tmp), POD_NAMESPACE="kserve")
        probes = [f"--metrics-addr=127.0.0.1:{free_port()}", f"--health-probe-addr=127.0.0.1:{free_port()}"]
        self._spawn("kserve-manager", *probes, f"--webhook-port={free_port()}", directory=directory, env=env)

    def install_scaledobject_crd(self) -> None:
        """KEDA's ScaledObject CRD (`build.sh keda`), served once this returns: its schema then
        validates the ScaledObjects written, though no KEDA operator acts on them."""
        self.kubectl("apply", "--server-side", f"--filename={build('keda') / 'keda.sh_scaledobjects.yaml'}")
        deadline = time.monotonic() + 60
        # as in install_upstream_crds: a CRD just created has no conditions, an error to `kubectl wait`
        while self.kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", check=False).returncode:
            if time.monotonic() > deadline:
                raise ControlPlaneUnavailable("KEDA's ScaledObject CRD was not Established within 60 s")
            time.sleep(0.5)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=5)  # throw-away state: no need to wait out graceful shutdowns
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    # the API ---------------------------------------------------------------------------------

    def _http_ok(self, url: str) -> bool:
        try:
            with urllib.request.urlopen(url, context=self._ssl if url.startswith("https") else None, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _exists(self, path: str) -> bool:
        return self._http_ok(self.url + path)

    def request(self, method: str, path: str, body: dict | list | None = None, content_type: str = "application/json") -> dict:
        """One admin API call; raises urllib.error.HTTPError on a status >= 400."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, context=self._ssl, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True, input: str | None = None):
        result = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def install_upstream_crds(self) -> None:
        """Every CustomResourceDefinition under ../shared/upstream-crds/ (its ConfigMaps belong to
        namespaces of KServe and Knative that do not exist here), then wait until served."""
        crds = [
            d for path in sorted(UPSTREAM_CRDS.rglob("*.yaml")) for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "CustomResourceDefinition"
        ]  # fmt: skip
        if not crds:
            raise ControlPlaneUnavailable(f"no CustomResourceDefinitions under {UPSTREAM_CRDS} (../shared beside the checkout)")
        self.kubectl("apply", "--server-side", "--filename=-", input=yaml.safe_dump_all(crds))
        deadline = time.monotonic() + 60
        # a CRD just created has no conditions yet, which `kubectl wait` takes for an error
        while self.kubectl("wait", "--for=condition=Established", "--all", "crd", "--timeout=30s", check=False).returncode:
            if time.monotonic() > deadline:
                raise ControlPlaneUnavailable("the upstream CRDs were not Established within 60 s")
            time.sleep(0.5)

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        review = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}},
        )
        return review["status"]["token"]

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        return kubeconfig(
            self.directory / f"{namespace}-{name}.kubeconfig",
            self.url,
            self.pki.path("ca.crt"),
            {"token": self.service_account_token(namespace, name)},
        )

    def add_gpu_node(self, name: str, product: str, gpus: int, cpu: str = "64", memory: str = "512Gi") -> None:
        resources = {"cpu": cpu, "memory": memory, "pods": "110", "nvidia.com/gpu": str(gpus)}
        self.request(
            "POST",
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {FAKE_NODE[0]: FAKE_NODE[1]},
                    "labels": {"kubernetes.io/hostname": name, "type": "kwok", "nvidia.com/gpu.product": product},
                },
                # a Node's status may be written on create; kwok keeps capacity and marks it Ready
                "status": {"capacity": resources, "allocatable": resources},
            },
        )
