"""The admission webhook: real AdmissionReview v1 payloads, patches applied as the API server
would (RFC 6902), reinvocation, pods with generateName, malformed bodies, fuzzing, HTTPS."""

import base64
import json
import ssl

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.annotations import KNATIVE_CLASS, OUR_KNATIVE_CLASS, PREFIX
from webhook.review import GROUP_LABEL, SCHEDULING_GATE
from autoscaler.https_server import serve_https
from webhook.server import DEFAULT_CLASSES, LIMITS, answer, build_app

from .certs import Authority
from .jsonpatch import apply_patch


def admission(obj: dict, kind: str = "InferenceService", operation: str = "CREATE", dry_run: bool = False) -> dict:
    group, version = ("serving.kserve.io", "v1beta1") if kind == "InferenceService" else ("", "v1")
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": "inferenceservices" if kind != "Pod" else "pods"},
            "namespace": "prod",
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": dry_run,
        },
    }


def isvc(annotations: dict, **spec) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": "prod", "annotations": annotations},
        "spec": {
            "predictor": {"model": {"modelFormat": {"name": "huggingface"}, "storageUri": "hf://meta-llama/Llama-3-8B"}, **spec}
        },
    }


def respond(review: dict) -> tuple[int, dict]:
    return answer(json.dumps(review).encode(), DEFAULT_CLASSES)


def patched(obj: dict, review: dict) -> dict:
    response = review["response"]
    if "patch" not in response:
        return obj
    assert response["patchType"] == "JSONPatch"
    return apply_patch(obj, json.loads(base64.b64decode(response["patch"])))


MANAGED = {PREFIX + "enabled": "true", PREFIX + "service-class": "Premium"}


def test_managed_isvc_gets_our_class_defaults_and_reinvocation_changes_nothing():
    obj = isvc(MANAGED)
    status, review = respond(admission(obj))
    assert status == 200 and review["response"]["allowed"] and review["response"]["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    result = patched(obj, review)
    annotations = result["metadata"]["annotations"]
    assert annotations[KNATIVE_CLASS] == OUR_KNATIVE_CLASS
    assert (annotations[PREFIX + "min-replicas"], annotations[PREFIX + "max-replicas"], annotations[PREFIX + "model"]) == (
        "1",
        "10",
        "chat",
    )
    assert result["spec"]["predictor"]["minReplicas"] == 1 and result["spec"]["predictor"]["maxReplicas"] == 10
    _, again = respond(admission(result, operation="UPDATE"))
    assert again["response"]["allowed"] and "patch" not in again["response"]  # idempotent under reinvocation


@pytest.mark.parametrize("mode", ["RawDeployment", "Standard"])
def test_explicit_bounds_win_and_standard_mode_uses_an_external_autoscaler(mode):
    obj = isvc(MANAGED | {PREFIX + "min-replicas": "2", PREFIX + "max-replicas": "6", "serving.kserve.io/deploymentMode": mode})
    result = patched(obj, respond(admission(obj))[1])
    assert result["spec"]["predictor"]["minReplicas"] == 2 and result["spec"]["predictor"]["maxReplicas"] == 6
    assert result["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert KNATIVE_CLASS not in result["metadata"]["annotations"]


def test_the_mode_kserve_recorded_in_status_decides_and_a_mode_left_unsaid_is_warned_of():
    recorded = isvc(MANAGED) | {"status": {"deploymentMode": "Standard"}}
    _, answered = respond(admission(recorded, operation="UPDATE"))
    result = patched(recorded, answered)
    assert result["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
    assert not any("deploymentMode" in w for w in answered["response"].get("warnings", []))
    _, unsaid = respond(admission(isvc(MANAGED)))
    assert any("deploymentMode not set: taken as Knative" in w for w in unsaid["response"]["warnings"])
    knative = isvc(MANAGED | {"serving.kserve.io/deploymentMode": "Knative"})
    assert patched(knative, respond(admission(knative))[1])["metadata"]["annotations"][KNATIVE_CLASS] == OUR_KNATIVE_CLASS


def test_dry_run_gets_the_same_answer():
    obj = isvc(MANAGED)
    assert respond(admission(obj))[1] == respond(admission(obj, dry_run=True))[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        ({PREFIX + "service-class": "Gold"}, "unknown service class 'Gold' (one of: Bronze, Free, Premium)"),
        ({PREFIX + "min-replicas": "5", PREFIX + "max-replicas": "2"}, "min-replicas (5) must not exceed"),
        ({PREFIX + "max-replicas": "many"}, "max-replicas: expected a whole number (ASCII digits), got 'many'"),
        ({PREFIX + "max-replicas": "0"}, "max-replicas: must be >= 1, got 0"),
        ({PREFIX + "accelerators": "H100,,A100"}, "expected comma-separated GPU types"),
        ({PREFIX + "progress-deadline": "7200"}, "at most 3600 seconds, got 7200"),
        ({PREFIX + "enabled": "yes"}, 'expected "true" or "false", got \'yes\''),
    ],
)
def test_bad_annotations_are_refused_with_a_precise_message(extra, message):
    status, review = respond(admission(isvc(MANAGED | extra)))
    response = review["response"]
    assert status == 200 and response["allowed"] is False
    assert response["status"]["code"] == 422 and message in response["status"]["message"]


def test_missing_class_and_warnings():
    _, review = respond(admission(isvc({PREFIX + "enabled": "true"})))
    assert not review["response"]["allowed"] and "service-class is required" in review["response"]["status"]["message"]
    _, review = respond(admission(isvc(MANAGED | {PREFIX + "colour": "blue", KNATIVE_CLASS: "kpa.autoscaling.knative.dev"})))
    assert review["response"]["allowed"]
    assert any("colour" in w for w in review["response"]["warnings"]) and any(
        "is replaced by" in w for w in review["response"]["warnings"]
    )


def test_unmanaged_isvc_is_untouched():
    _, review = respond(admission(isvc({"team": "ml"})))
    assert review["response"] == {"uid": review["response"]["uid"], "allowed": True}


def pod(labels: dict, annotations: dict, gates=None) -> dict:
    spec = {
        "containers": [
            {"name": "kserve-container", "image": "vllm/vllm-openai", "resources": {"limits": {"nvidia.com/gpu": "1"}}}
        ]
    }
    if gates is not None:
        spec["schedulingGates"] = gates
    metadata = {"generateName": "chat-predictor-00002-deployment-", "labels": labels, "annotations": annotations}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


REVISION_POD = (
    {"serving.knative.dev/revision": "chat-predictor-00002", "serving.kserve.io/inferenceservice": "chat"},
    {PREFIX + "enabled": "true"},
)


def test_revision_pod_is_gated_and_grouped_even_without_a_name():
    obj = pod(*REVISION_POD)
    _, review = respond(admission(obj, kind="Pod"))
    result = patched(obj, review)
    assert result["spec"]["schedulingGates"] == [{"name": SCHEDULING_GATE}]
    assert result["metadata"]["labels"][GROUP_LABEL] == "chat-predictor-00002"
    _, again = respond(admission(result, kind="Pod"))
    assert "patch" not in again["response"]


def test_existing_gates_are_kept():
    obj = pod(*REVISION_POD, gates=[{"name": "example.com/other"}])
    result = patched(obj, respond(admission(obj, kind="Pod"))[1])
    assert result["spec"]["schedulingGates"] == [{"name": "example.com/other"}, {"name": SCHEDULING_GATE}]


@pytest.mark.parametrize(
    "operation, labels, annotations", [("UPDATE", *REVISION_POD), ("CREATE", {"app": "x"}, {}), ("CREATE", REVISION_POD[0], {})]
)
def test_other_pods_are_left_alone(operation, labels, annotations):
    _, review = respond(admission(pod(labels, annotations), kind="Pod", operation=operation))
    assert review["response"]["allowed"] and "patch" not in review["response"]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"{not json", "body is not JSON"),
        (b"[]", "not an AdmissionReview"),
        (
            json.dumps({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}}).encode(),
            "unsupported apiVersion",
        ),
        (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request.uid is missing"),
        (
            json.dumps(
                {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u", "object": 5}}
            ).encode(),
            "request.object must be an object",
        ),
    ],
)
def test_malformed_bodies_are_400_with_the_reason(body, message):
    status, document = answer(body, DEFAULT_CLASSES)
    assert status == 400 and message in document["error"]


def test_malformed_objects_still_get_an_answer():
    bad = isvc(MANAGED)
    bad["metadata"]["annotations"] = {"x": 1}
    status, review = respond(admission(bad))
    assert (
        status == 200
        and review["response"]["allowed"] is False
        and "must map strings to strings" in review["response"]["status"]["message"]
    )
    broken_pod = pod(*REVISION_POD, gates="nope")
    status, review = respond(admission(broken_pod, kind="Pod"))
    assert status == 200 and review["response"]["allowed"] is True  # never block a workload on a bad field


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(["InferenceService", "Pod", "Deployment"]),
    operation=st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT", 7]),
    annotations=st.dictionaries(
        st.sampled_from(sorted(MANAGED) + [PREFIX + "max-replicas", PREFIX + "min-replicas", "x"]),
        st.text(max_size=6) | st.integers(),
        max_size=4,
    ),
    noise=st.dictionaries(st.sampled_from(["metadata", "spec", "kind", "status"]), json_values, max_size=3),
)
def test_fuzzed_reviews_never_fail_the_server(kind, operation, annotations, noise):
    obj = pod(*REVISION_POD) if kind == "Pod" else isvc({})
    obj["metadata"]["annotations"] = annotations
    obj.update(noise)
    review = admission(obj, kind=kind if kind != "Deployment" else "Pod")
    review["request"]["operation"] = operation
    status, document = answer(json.dumps(review).encode(), DEFAULT_CLASSES)
    assert status in (200, 400)
    if status == 200:
        assert document["response"]["uid"] == review["request"]["uid"] and isinstance(document["response"]["allowed"], bool)


@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
@settings(max_examples=300, deadline=None)
def test_fuzzed_bodies_never_fail_the_server(body):
    status, _ = answer(body, DEFAULT_CLASSES)
    assert status in (200, 400)


async def test_over_https(tmp_path):
    authority = Authority.create("webhook-ca")
    cert, key = authority.issue("localhost", tmp_path, server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    runner, site = await serve_https(build_app(DEFAULT_CLASSES), "127.0.0.1", 0, context, LIMITS)
    port = site.bound_port
    client = ssl.create_default_context(cadata=authority.pem)
    try:
        async with aiohttp.ClientSession() as session:
            obj = isvc(MANAGED)
            async with session.post(f"https://127.0.0.1:{port}/mutate", json=admission(obj), ssl=client) as response:
                assert response.status == 200 and response.headers["Content-Type"] == "application/json"
                assert patched(obj, await response.json())["metadata"]["annotations"][KNATIVE_CLASS] == OUR_KNATIVE_CLASS
            async with session.post(f"https://127.0.0.1:{port}/mutate", data=b"garbage", ssl=client) as response:
                assert response.status == 400 and "body is not JSON" in (await response.json())["error"]
    finally:
        await runner.cleanup()
