"""The controller's cycles against the real kube-apiserver, as config/'s ServiceAccount: stale
data, restarts, a broken data ConfigMap, its HTTP endpoints with real TokenReviews and
SubjectAccessReviews, and load from a real Prometheus (moved here from tests/test_controller.py,
which keeps only what needs an injected API fault).

Each test has a namespace of its own (tests/e2e/isvc_namespace.py).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.controller.collector import CollectError, CollectorSettings, PrometheusCollector
from autoscaler.controller.server import build_app
from autoscaler.kserve import COMPONENT_LABEL, DEPLOYMENT_MODE, ISVC_LABEL, PREDICTOR
from autoscaler.kube_auth import KubernetesReviews, PathGate

from ..cluster_objects import isvc, pod_autoscaler
from ..prometheus_server import free_port
from ..test_controller import StandInCollector, vllm_and_prometheus  # noqa: F401 - the fixture
from ..test_controller_planning import observed
from .conftest import NAMESPACE, kubectl_json
from .isvc_namespace import CHAT, CODE, named, stop
from .test_controller_rbac import settled


@named("e2e-prometheus-down")
async def test_prometheus_down_keeps_last_decisions_stale_and_never_scales_down(namespace):
    namespace.create_isvc("chat", CHAT)
    collector = StandInCollector({(namespace.name, "chat"): observed(20.0)})
    controller = await namespace.controller(collector)
    try:
        report = await controller.cycle()
        assert not namespace.mine(report), report.as_dict()
        before = namespace.decision("chat")
        [published] = namespace.published(controller)
        assert (published.isvc, published.desired_replicas, published.revision) == ("chat", before["replicas"], "")
        controller.collector = PrometheusCollector(f"http://127.0.0.1:{free_port()}", timeout_s=2)  # nothing listening
        report = await controller.cycle()
        assert "Prometheus query failed" in report.error and report.stale >= 1
        assert namespace.decision("chat") == before  # nothing rewritten
        [published] = namespace.published(controller)
        assert published.desired_replicas == before["replicas"] and published.decided_at == before["decided_at"]
        await settled(
            controller,
            lambda: any(
                c["type"] == "AutoscalerDecision" and c["status"] == "Unknown"
                for c in controller.informers["isvcs"].objects[(namespace.name, "chat")].get("status", {}).get("conditions", [])
            ),
        )
    finally:
        await stop(controller)


@named("e2e-partial-data")
async def test_partial_data_marks_only_the_missing_isvc_stale(namespace):
    namespace.create_isvc("chat", CHAT)
    namespace.create_isvc("code", CODE)
    for pod, ready in (("chat-a", True), ("chat-b", True), ("chat-c", False)):
        _predictor_pod(namespace, "chat", pod, ready)
    collector = StandInCollector({(namespace.name, "chat"): observed(20.0), (namespace.name, "code"): observed(20.0)})
    controller = await namespace.controller(collector)
    try:
        assert not namespace.mine(await controller.cycle())
        code_before = namespace.decision("code")
        assert namespace.decision("chat")["replicas"] != 2  # what the planner would take were the pods not read
        collector.observations = {(namespace.name, "chat"): observed(1.0)}
        report = await controller.cycle()
        assert report.stale >= 1 and not namespace.mine(report)
        assert namespace.decision("code") == code_before and namespace.decision("chat")["arrival_rate"] == 1.0
        # the planner was told the replicas ready in the cluster, not the decision's count
        assert controller.state.learned.serving[f"{namespace.name}/chat"][0] == 2
    finally:
        await stop(controller)


def _predictor_pod(namespace, isvc_name: str, name: str, ready: bool) -> None:
    """A pod as KServe labels a predictor's, held from the scheduler (no one else writes its
    status), its Ready condition set as the kubelet would."""
    labels = {ISVC_LABEL: isvc_name, COMPONENT_LABEL: PREDICTOR}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace.name, "labels": labels},
        "spec": {"schedulerName": "held-by-test", "containers": [{"name": "main", "image": "vllm/vllm-openai"}]},
    }
    namespace.plane.kubectl("apply", "--filename=-", input=json.dumps(pod))
    status = {"status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    namespace.plane.kubectl(
        "patch",
        "pod",
        name,
        f"--namespace={namespace.name}",
        "--subresource=status",
        "--type=merge",
        f"--patch={json.dumps(status)}",
    )


@named("e2e-restart")
async def test_restart_rebuilds_from_the_cluster(namespace):
    namespace.create_isvc("chat", CHAT)
    collector = StandInCollector({(namespace.name, "chat"): observed(12.0, ttft_s=3.0)})
    first = await namespace.controller(collector)
    try:
        assert not namespace.mine(await first.cycle())
    finally:
        await stop(first)
    decided = namespace.decision("chat")
    # the learned bias travels in the stored decision (resumed: test_controller_planning)
    assert decided["replicas"] >= 1 and decided["ttft_scale"] == decided["itl_scale"]

    collector.down = True
    second = await namespace.controller(collector)
    try:
        await second.cycle()
        [published] = namespace.published(second)
        assert published.desired_replicas == decided["replicas"]
        assert namespace.exists("hpa", "chat-optimizer")
    finally:
        await stop(second)


@named("e2e-bad-data")
async def test_bad_data_configmap_edit_keeps_the_last_good_data(namespace):
    plane = namespace.plane
    good = kubectl_json(plane, "get", "configmap", "inference-autoscaler-data", f"--namespace={NAMESPACE}")
    namespace.create_isvc("chat", CHAT)
    controller = await namespace.controller(StandInCollector({(namespace.name, "chat"): observed(8.0)}))
    try:
        await controller.cycle()
        [key] = [k for k in good["data"] if k.startswith("serviceclass")]
        patch = {"data": {key: "{not json"}}
        plane.kubectl(
            "patch", "configmap", "inference-autoscaler-data", f"--namespace={NAMESPACE}", f"--patch={json.dumps(patch)}"
        )
        await settled(controller, lambda: "not json" in str(controller.informers["data"].objects))
        report = await controller.cycle()
        assert not report.error and not namespace.mine(report) and namespace.published(controller)
        assert key in controller.data_error and "keeping the last good data" in controller.data_error
    finally:
        await stop(controller)
        # the session's other tests read this ConfigMap: back as config/ made it
        restore = {"data": {key: good["data"][key]}}
        plane.kubectl(
            "patch", "configmap", "inference-autoscaler-data", f"--namespace={NAMESPACE}", f"--patch={json.dumps(restore)}"
        )


@named("e2e-endpoints")
async def test_invoke_and_metrics_endpoints_with_real_reviews(namespace):
    """/invoke and /metrics authorised by the real server: a ServiceAccount's token through
    TokenReview, the paths through SubjectAccessReview against config/'s ClusterRoles."""
    plane = namespace.plane
    plane.kubectl("create", "serviceaccount", "ops", f"--namespace={namespace.name}")
    for role in ("inference-autoscaler-invoker", "inference-autoscaler-metrics-reader"):
        plane.kubectl(
            "create", "clusterrolebinding", f"{role}-{namespace.name}", f"--clusterrole={role}",
            f"--serviceaccount={namespace.name}:ops",
        )  # fmt: skip
    ops = {"Authorization": f"Bearer {plane.service_account_token(namespace.name, 'ops')}"}
    namespace.create_isvc("chat", CHAT)
    controller = await namespace.controller(StandInCollector({(namespace.name, "chat"): observed(8.0)}))
    gate = PathGate(KubernetesReviews(controller.kube.api))
    client = TestClient(TestServer(build_app(controller, controller.hub, gate.authorize, 15.0)))
    await client.start_server()
    try:
        assert (await client.get("/readyz")).status == 503
        response = await client.post("/invoke", headers=ops)
        body = await response.json()
        assert response.status == 200 and body["services"] >= 1 and set(body) >= {"collect_s", "optimize_s", "actuate_s"}
        text = await (await client.get("/metrics", headers=ops)).text()
        assert f'inference_autoscaler_desired_replicas{{namespace="{namespace.name}",isvc="chat"' in text
        assert 'inference_autoscaler_cycle_phase_seconds{phase="optimize"}' in text
        assert "inference_autoscaler_cycles_total 1" in text
        assert (await client.get("/readyz")).status == 200
    finally:
        await client.close()
        await stop(controller)
        for role in ("inference-autoscaler-invoker", "inference-autoscaler-metrics-reader"):
            plane.kubectl("delete", "clusterrolebinding", f"{role}-{namespace.name}")


@named("prod")  # the namespace tests/vllm_emulator.py labels its load with
async def test_controller_cycle_with_real_prometheus_load(namespace, vllm_and_prometheus):  # noqa: F811
    _, prometheus = vllm_and_prometheus
    namespace.create_isvc("chat", CHAT)
    namespace.create_isvc("code", CODE, service_class="Bronze")
    await asyncio.sleep(6)  # a full window of scrapes
    controller = await namespace.controller(PrometheusCollector(prometheus.url, CollectorSettings(window_s=5)))
    try:
        report = await controller.cycle()
        assert not report.error and not namespace.mine(report)
        rates = {d.isvc: d.arrival_rate for d in namespace.published(controller)}
        assert rates["chat"] == pytest.approx(4.0, rel=0.15) and rates["code"] == pytest.approx(10.0, rel=0.15)
    finally:
        await stop(controller)


@named("e2e-revisions")
async def test_knative_revisions_get_hpas_serverless_services_and_status(namespace):
    plane, ns = namespace.plane, namespace.name
    managed = isvc("chat", CHAT, raw=False, namespace=ns)
    managed["metadata"]["annotations"][DEPLOYMENT_MODE] = "Knative"
    plane.kubectl("apply", "--filename=-", input=json.dumps(managed))
    status = {
        "status": {
            "components": {
                "predictor": {"latestCreatedRevision": "chat-predictor-00003", "latestReadyRevision": "chat-predictor-00002"}
            }
        }
    }
    isvc_status = ("patch", "inferenceservice", "chat", f"--namespace={ns}", "--subresource=status", "--type=merge")
    plane.kubectl(*isvc_status, f"--patch={json.dumps(status)}")
    revisions = ("chat-predictor-00001", "chat-predictor-00002", "chat-predictor-00003")
    for revision in revisions:
        pa = pod_autoscaler("chat", revision, namespace=ns)
        del pa["metadata"]["generation"]  # the server's to set
        pa["spec"]["reachability"] = "Unreachable" if revision.endswith("1") else "Reachable"  # routes' targets
        plane.kubectl("apply", "--filename=-", input=json.dumps(pa))
        # the revision's Deployment: only its name (the PA's scaleTargetRef) and replicas matter here
        plane.kubectl(
            "create", "deployment", f"{revision}-deployment", "--image=vllm/vllm-openai", "--replicas=2", f"--namespace={ns}"
        )
    # an HPA of ours left from when the first revision served
    target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "chat-predictor-00001-deployment"}
    left = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": revisions[0], "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "inference-autoscaler"}},
        "spec": {"scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 20},
    }
    plane.kubectl("apply", "--filename=-", input=json.dumps(left))
    controller = await namespace.controller(StandInCollector({(ns, "chat"): observed(8.0)}))
    try:
        report = await controller.cycle()
        assert not namespace.mine(report), report.as_dict()
        replicas = namespace.decision("chat")["replicas"]
        for serving in revisions[1:]:
            made = kubectl_json(plane, "get", "hpa", serving, f"--namespace={ns}")
            assert made["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"] == {
                "isvc": "chat",
                "revision": serving,
            }
            assert made["spec"]["scaleTargetRef"]["name"] == f"{serving}-deployment"
            assert kubectl_json(plane, "get", "serverlessservice", serving, f"--namespace={ns}")["spec"]["mode"] == "Serve"
            assert kubectl_json(plane, "get", "podautoscaler", serving, f"--namespace={ns}")["status"]["desiredScale"] == replicas
            assert kubectl_json(plane, "get", "deployment", f"{serving}-deployment", f"--namespace={ns}")["spec"]["replicas"] == 2
        retired = kubectl_json(plane, "get", "podautoscaler", revisions[0], f"--namespace={ns}")["status"]
        assert retired["desiredScale"] == 0 and not namespace.exists("hpa", revisions[0])
        assert (
            kubectl_json(plane, "get", "deployment", f"{revisions[0]}-deployment", f"--namespace={ns}")["spec"]["replicas"] == 0
        )
        assert sorted(d.revision for d in namespace.published(controller)) == list(revisions[1:])
    finally:
        await stop(controller)


class _RefusingHistory(StandInCollector):
    async def history(self, span_s, step_s, slos_s=None):
        raise CollectError("Prometheus query failed: HTTP Status Code 422 (range too long)")


@named("e2e-recall")
async def test_a_controller_started_beside_running_isvcs_plans_its_first_cycle_with_their_past(namespace):
    """Started (or failed over) beside running ISVCs, the controller reads their lookback from
    Prometheus before its first plan (Controller._recall, planner.recall): chat ran at 20-40
    req/s over the minutes before and reads 8 now; its twin, the same model and class, has no
    past. The first decision sizes chat with the swings seen before it, the twin as for
    Poisson arrivals at 8. Prometheus refusing the range queries costs only that: the cycle
    decides from one window, with no error."""
    namespace.create_isvc("chat", CHAT)
    namespace.create_isvc("twin", CHAT)
    chat, twin = (namespace.name, "chat"), (namespace.name, "twin")
    past = [(ago, {chat: observed(20.0 if ago % 60 else 40.0)}) for ago in (180, 150, 120, 90, 60, 30)]
    controller = await namespace.controller(StandInCollector({chat: observed(8.0), twin: observed(8.0)}, past))
    try:
        report = await controller.cycle()
        assert not namespace.mine(report), report.as_dict()
        assert controller.recalled_cycles == 6
        assert namespace.decision("chat")["arrival_rate"] == namespace.decision("twin")["arrival_rate"] == 8.0
        assert namespace.decision("chat")["replicas"] > namespace.decision("twin")["replicas"]
    finally:
        await stop(controller)
    refused = await namespace.controller(_RefusingHistory({chat: observed(8.0), twin: observed(8.0)}))
    try:
        report = await refused.cycle()
        assert not report.error and not namespace.mine(report) and refused.recalled_cycles == 0
    finally:
        await stop(refused)
