"""The metrics adapter as the real v1beta1.external.metrics.k8s.io APIService, and the real HPA
controller scaling on it.

What the emulator cannot show: the kube-aggregator finding our server through an APIService and
a Service (ExternalName: no kube-proxy here), verifying our certificate by the caBundle for the
name <service>.<namespace>.svc, and proxying with its front-proxy client certificate and
X-Remote-* headers, which our adapter must believe only from that CA (published by the real
API server in kube-system/extension-apiserver-authentication); TokenReviews and
SubjectAccessReviews answered by the real server under config/'s RBAC (auth-delegator, the
authentication reader, the HPA's reader binding); and the real HPA controller (its own
ServiceAccount, --use-service-account-credentials) turning our desired_replicas into a Deployment's
replicas, then holding them when the adapter withholds data that is too old.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from autoscaler import certificates
from autoscaler.controller.manifests import hpa
from autoscaler.policy.guards import SCALE_DOWN_WINDOW_S
from autoscaler.decision_stream import DecisionHub, serve_decisions
from autoscaler.kserve import GPU_RESOURCE
from autoscaler.proto import decisions_pb2 as pb

from ..control_plane import ROOT
from ..prometheus_server import free_port
from .conftest import NAMESPACE, Process, kubectl_json

HPA_NAMESPACE = "e2e-hpa"
METRIC = f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{HPA_NAMESPACE}/desired_replicas?labelSelector=isvc%3Dchat"
STALE_AFTER_S, MAX_AGE_S = 3, 6
SCALE_WITHIN_S = 30  # HPA sync period 1 s; the adapter answers at once
HELD_S = 10  # how long a fall is watched being held


class DecisionFeed:
    """The controller's DecisionService, republishing its decisions every second as the
    controller does every cycle, on an event loop of its own (the fixtures are synchronous)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.hub = DecisionHub()
        self.replicas: dict[str, int] = {}
        self.port = free_port()
        self.server = None
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.server = await serve_decisions(self.hub, f"127.0.0.1:{self.port}")
            started.set()
            while True:
                now = time.time()
                self.hub.publish(
                    pb.Decision(namespace=HPA_NAMESPACE, isvc=isvc, accelerator="H100", desired_replicas=n, decided_at=now)
                    for isvc, n in self.replicas.items()
                )
                await asyncio.sleep(1)

        self.task = self.loop.create_task(main())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        """The controller gone: the stream drops and nothing more is published."""

        async def shutdown() -> None:
            if self.server is not None:
                await self.server.stop(None)
            self.task.cancel()  # last: its end stops the loop this runs on

        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
            self.thread.join(10)


@pytest.fixture(scope="module")
def adapter(deployed, tmp_path_factory):
    plane = deployed
    directory = tmp_path_factory.mktemp("metrics-adapter")
    ca = certificates.Authority.create("metrics-adapter-ca", days=1)
    names = certificates.service_names("metrics-adapter", NAMESPACE) + ["localhost", "127.0.0.1"]
    cert, key = ca.issue("metrics-adapter", names, days=1)
    (directory / "tls.crt").write_text(cert)
    (directory / "tls.key").write_text(key)
    feed = DecisionFeed()
    feed.replicas["chat"] = 3
    port = free_port()
    process = Process.start(
        directory / "adapter.log", "metrics-adapter", f"--secure-port={port}", "--bind-address=127.0.0.1",
        f"--tls-cert-file={directory / 'tls.crt'}", f"--tls-private-key-file={directory / 'tls.key'}",
        f"--decisions=127.0.0.1:{feed.port}", f"--stale-after={STALE_AFTER_S}", f"--max-age={MAX_AGE_S}",
        f"--kubeconfig={plane.service_account_kubeconfig(NAMESPACE, 'metrics-adapter')}",
    )  # fmt: skip
    context = ssl.create_default_context(cadata=ca.pem)
    process.wait_ready(f"https://127.0.0.1:{port}/readyz", context)
    # the Service the APIService names: ExternalName to this host, as there is no kube-proxy
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "metrics-adapter", "namespace": NAMESPACE},
        "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"port": port, "name": "https"}]},
    }
    api_service = yaml.safe_load((ROOT / "config" / "metrics-adapter" / "apiservice.yaml").read_text())
    api_service["spec"]["service"]["port"] = port
    api_service["spec"]["caBundle"] = base64.b64encode(ca.pem.encode()).decode()
    plane.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--filename=-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [service, api_service]}),
    )
    plane.kubectl("wait", "--for=condition=Available", f"apiservice/{api_service['metadata']['name']}", "--timeout=60s")
    plane.kubectl("create", "namespace", HPA_NAMESPACE)
    yield plane, feed, port, context
    plane.kubectl("delete", "apiservice", api_service["metadata"]["name"], check=False)
    plane.kubectl("delete", "namespace", HPA_NAMESPACE, "--wait=false", check=False)
    feed.stop()
    log = process.stop()
    assert "Traceback" not in log, log[-3000:]


def direct(port: int, context: ssl.SSLContext, token: str) -> int:
    """The adapter asked directly with a bearer token, as a client other than the aggregator."""
    request = urllib.request.Request(f"https://127.0.0.1:{port}{METRIC}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def served(plane, within_s: float = 30.0) -> dict:
    """The metric through the aggregator, once the adapter serves it: on a loaded machine the
    feed's 1 s republishing can lag past the 3 s stale-after, and the adapter then rightly
    withholds the value (an empty list) until the next one arrives."""
    deadline = time.monotonic() + within_s
    while True:
        values = json.loads(plane.kubectl("get", "--raw", METRIC).stdout)
        if values["items"] or time.monotonic() > deadline:
            return values
        time.sleep(0.5)


def test_external_metrics_through_the_aggregator_with_real_reviews(adapter):
    plane, _, port, context = adapter
    values = served(plane)
    assert [(i["metricName"], i["value"]) for i in values["items"]] == [("desired_replicas", "3")]
    assert values["items"][0]["metricLabels"]["isvc"] == "chat"

    plane.kubectl("create", "serviceaccount", "nobody", f"--namespace={HPA_NAMESPACE}")
    nobody = plane.service_account_kubeconfig(HPA_NAMESPACE, "nobody")
    refused = plane.kubectl("get", "--raw", METRIC, kubeconfig=nobody, check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower(), refused.stderr

    # straight to the adapter: a TokenReview, then a SubjectAccessReview, both by the real server
    assert direct(port, context, plane.service_account_token("kube-system", "horizontal-pod-autoscaler")) == 200
    assert direct(port, context, plane.service_account_token(HPA_NAMESPACE, "nobody")) == 403
    assert direct(port, context, "not-a-token") == 401


class ScaledDeployment:
    """A Deployment `{isvc}-predictor` and our HPA `{isvc}-optimizer` on the ISVC's published
    desired_replicas, as the controller writes it for a Standard-mode predictor."""

    def __init__(self, plane, isvc: str, gpu_node: str | None = None):
        """`gpu_node`: each pod asks one GPU of that node (none: a CPU pod anywhere)."""
        self.plane, self.isvc = plane, isvc
        self.name = f"{isvc}-predictor"
        labels = {"app": self.name}
        container = {"name": "main", "image": "vllm", "resources": {"requests": {"cpu": "100m"}}}
        placement = {}
        if gpu_node is not None:
            container["resources"]["limits"] = {GPU_RESOURCE: "1"}
            placement = {"nodeSelector": {"kubernetes.io/hostname": gpu_node}}
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": self.name, "namespace": HPA_NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [container], **placement},
                },
            },
        }
        plane.kubectl("apply", "--filename=-", input=json.dumps(deployment))
        self.owner = kubectl_json(plane, "get", "deployment", self.name, f"--namespace={HPA_NAMESPACE}")

    def apply_hpa(self, scale_down_s: int | None = None) -> None:
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name}
        manifest = hpa(
            f"{self.isvc}-optimizer", HPA_NAMESPACE, target, {"isvc": self.isvc}, (1, 10), self.owner, True, scale_down_s
        )
        self.plane.kubectl("apply", "--filename=-", input=json.dumps(manifest))

    def hpa_status(self) -> dict:
        return kubectl_json(self.plane, "get", "hpa", f"{self.isvc}-optimizer", f"--namespace={HPA_NAMESPACE}").get("status", {})

    def replicas(self) -> int:
        return kubectl_json(self.plane, "get", "deployment", self.name, f"--namespace={HPA_NAMESPACE}")["spec"]["replicas"]

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + SCALE_WITHIN_S
        while self.replicas() != count:
            assert time.monotonic() < deadline, self.hpa_status()
            time.sleep(0.5)

    def pods(self) -> dict[str, str]:
        """Its pods not being deleted, each with the node it is bound to ("": none yet)."""
        found = kubectl_json(self.plane, "get", "pods", f"--namespace={HPA_NAMESPACE}", f"--selector=app={self.name}")
        return {
            pod["metadata"]["name"]: pod["spec"].get("nodeName", "")
            for pod in found["items"]
            if not pod["metadata"].get("deletionTimestamp")
        }

    def wait_for_pods(self, bound: int, unbound: int) -> dict[str, str]:
        deadline = time.monotonic() + SCALE_WITHIN_S
        while True:
            pods = self.pods()
            nodes = list(pods.values())
            if len(nodes) - nodes.count("") == bound and nodes.count("") == unbound:
                return pods
            assert time.monotonic() < deadline, pods
            time.sleep(0.5)


def test_a_scale_down_window_shortened_in_place_applies_to_the_recommendations_already_made(adapter):
    """The controller rewrites an HPA's scale-down window in place (Plan.scale_down_s: one
    collector window while a model with no profile is identified, SCALE_DOWN_WINDOW_S after).
    The simulated HPA plays what horizontal.go's stabilizeRecommendationWithBehaviors does: the
    window in force at each sync is applied to the recommendations already kept with their
    times. Here the real HPA controller: a fall held by the 300 s window is released at the next
    syncs once the window is shortened, without waiting out the old one. Runs before the test
    below, which stops the feed."""
    plane, feed, _, _ = adapter
    code = ScaledDeployment(plane, "code")
    feed.replicas["code"] = 3
    code.apply_hpa(SCALE_DOWN_WINDOW_S)
    code.wait_for(3)
    feed.replicas["code"] = 1
    time.sleep(HELD_S)  # several syncs recommending 1, all within the 300 s window
    assert code.replicas() == 3
    # shorter than the time the recommendations of 1 have been made, longer than a sync: the
    # earlier recommendations of 3 fall outside it at once
    code.apply_hpa(HELD_S // 2)
    code.wait_for(1)
    feed.replicas.pop("code")


def test_a_window_of_none_lets_go_exactly_the_pods_waiting_for_a_gpu(adapter):
    """Where every pod the HPA keeps beyond the plan waits for a GPU, the plan's scale-down
    window is none (planner._unbound_released): a window of 0 at the next sync, and the
    ReplicaSet deleting the pods bound to no node first (ActivePodsWithRanks), let exactly those
    go. Here the real HPA controller, ReplicaSet controller and scheduler: on a node of 2 GPUs,
    a third pod asked for waits; the plan falls back to 2 and the 300 s window holds the third;
    with the window at 0 it is deleted, and both bound pods stay, also once the 300 s window is
    written back. Runs before the test below, which stops the feed."""
    plane, feed, _, _ = adapter
    node = "gpu-held-0"
    plane.add_gpu_node(node, "NVIDIA-L40S", 2)
    held = ScaledDeployment(plane, "held", gpu_node=node)
    try:
        feed.replicas["held"] = 2
        held.apply_hpa(SCALE_DOWN_WINDOW_S)
        bound = held.wait_for_pods(bound=2, unbound=0)
        feed.replicas["held"] = 3
        held.wait_for_pods(bound=2, unbound=1)
        feed.replicas["held"] = 2
        time.sleep(HELD_S)  # several syncs recommending 2, all within the 300 s window
        assert held.replicas() == 3 and len(held.pods()) == 3
        held.apply_hpa(0)
        held.wait_for(2)
        assert held.wait_for_pods(bound=2, unbound=0) == bound
        # the next cycle writes the 300 s window back: the recommendations of 3 still within it
        # bound the count from above only, so it stays at the plan's
        held.apply_hpa(SCALE_DOWN_WINDOW_S)
        time.sleep(HELD_S)
        assert held.replicas() == 2 and held.pods() == bound
    finally:
        feed.replicas.pop("held", None)
        plane.kubectl("delete", "deployment", held.name, f"--namespace={HPA_NAMESPACE}", "--wait=true")
        plane.kubectl("delete", "node", node)


def test_the_real_hpa_scales_to_desired_replicas_and_holds_when_data_is_withheld(adapter):
    plane, feed, _, _ = adapter
    chat = ScaledDeployment(plane, "chat")
    chat.apply_hpa()
    chat.wait_for(3)

    feed.stop()  # the controller is gone: past --max-age the adapter serves nothing for chat

    def scaling_active() -> str:
        return next((c["status"] for c in chat.hpa_status().get("conditions", []) if c["type"] == "ScalingActive"), "")

    deadline = time.monotonic() + MAX_AGE_S + 20
    while scaling_active() != "False":
        assert time.monotonic() < deadline, "the HPA never lost its metric"
        time.sleep(0.5)
    time.sleep(3)  # several HPA syncs without data
    assert chat.replicas() == 3  # held, not scaled to minReplicas
