"""Hypothesis over webhook requests: random JSON shapes in every field of an AdmissionReview,
hostile annotation values (Unicode digits, thousands of digits, whitespace), mangled bytes of a
real review, nesting and numbers near the bounds. Directly and over the real HTTPS server: never
a 5xx, never an exception, and every 200 is a well-formed review whose patch applies."""

import asyncio
import base64
import http.client
import json
import ssl
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.annotations import PREFIX
from autoscaler.https_server import serve_https
from webhook import bounded_json
from webhook.server import DEFAULT_CLASSES, LIMITS, answer, build_app

from .certs import Authority
from .jsonpatch import PatchFailed, apply_patch
from .test_webhook import MANAGED, REVISION_POD, admission, isvc, pod

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
digit_text = st.sampled_from(
    ["0", "1", "10", "1000", "1001", "３", "٣", "１０", "9" * 50, "9" * 4400, " 7 ", "-1", "+2", "1e3", "0x10", "", "07"]
)
annotation_values = digit_text | st.text(max_size=10) | st.sampled_from(["true", "false", "Premium", "Gold", "H100,A100", ",,"])
annotation_keys = st.sampled_from(
    sorted(MANAGED)
    + [PREFIX + k for k in ("min-replicas", "max-replicas", "progress-deadline", "accelerators", "model", "spec-changes", "x")]
    + ["autoscaling.knative.dev/class", "serving.kserve.io/deploymentMode"]
)
REQUEST_FIELDS = ["uid", "kind", "resource", "operation", "object", "oldObject", "namespace", "userInfo", "dryRun"]


@st.composite
def reviews(draw) -> tuple[bytes, dict | None]:
    """A review body, and the object it carries when the body is a well-formed review."""
    kind = draw(st.sampled_from(["InferenceService", "Pod"]))
    annotations = draw(st.dictionaries(annotation_keys, annotation_values, max_size=6))
    obj = pod(*REVISION_POD) if kind == "Pod" else isvc({})
    obj["metadata"]["annotations"] = annotations | (draw(st.sampled_from([{}, MANAGED])) if kind != "Pod" else {})
    for key, value in draw(
        st.dictionaries(st.sampled_from(["metadata", "spec", "status", "apiVersion"]), json_values, max_size=2)
    ).items():
        obj[key] = value
    review = admission(obj, kind=kind, operation=draw(st.sampled_from(["CREATE", "UPDATE", "DELETE", "CONNECT"])))
    for field, value in draw(st.dictionaries(st.sampled_from(REQUEST_FIELDS), json_values, max_size=2)).items():
        review["request"][field] = value
    body = json.dumps(review).encode()
    mangle = draw(st.sampled_from(["none", "none", "truncate", "flip", "deep", "digits"]))
    if mangle == "truncate":
        return body[: draw(st.integers(0, len(body)))], None
    if mangle == "flip":
        at = draw(st.integers(0, len(body) - 1))
        return body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :], None
    if mangle == "deep":
        depth = draw(st.integers(bounded_json.MAX_DEPTH - 10, bounded_json.MAX_DEPTH + 10))
        return body.replace(b'"uid"', b'"deep": ' + b"[" * depth + b"]" * depth + b', "uid"', 1), None
    if mangle == "digits":
        digits = draw(st.integers(bounded_json.MAX_DIGITS - 2, 5000))
        return body.replace(b'"uid"', b'"n": ' + b"7" * digits + b', "uid"', 1), None
    return body, obj


def check(status: int, document: dict, obj: dict | None) -> None:
    assert status in (200, 400), (status, document)
    if status == 400:
        assert isinstance(document["error"], str) and document["error"]
        return
    response = document["response"]
    assert document["kind"] == "AdmissionReview" and isinstance(response["allowed"], bool) and response["uid"]
    if not response["allowed"]:
        assert response["status"]["message"]
    if "patch" in response and obj is not None:
        try:
            apply_patch(obj, json.loads(base64.b64decode(response["patch"])))
        except PatchFailed as exc:
            pytest.fail(f"the patch does not apply: {exc}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(reviews())
def test_answers_never_fail(case):
    body, obj = case
    status, document = answer(body, DEFAULT_CLASSES)
    check(status, document, obj)


class ServerThread:
    """The webhook on the bounded HTTPS server, on its own loop in a thread, for sync clients."""

    def __init__(self, directory):
        authority = Authority.create("fuzz-ca")
        cert, key = authority.issue("localhost", directory, server=True)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.client = ssl.create_default_context(cadata=authority.pem)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            serve_https(build_app(DEFAULT_CLASSES), "127.0.0.1", 0, self.context, LIMITS), self.loop
        )
        self.runner, site = future.result(30)
        self.port = site.bound_port
        self.connection = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.client, timeout=30)
        return self

    def post(self, body: bytes) -> tuple[int, dict]:
        self.connection.request("POST", "/mutate", body=body, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        return response.status, json.loads(response.read())

    def __exit__(self, *_):
        self.connection.close()
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ServerThread(tmp_path_factory.mktemp("fuzz")) as running:
        yield running


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
@given(reviews())
def test_over_https_never_a_5xx(server, case):
    body, obj = case
    status, document = server.post(body)  # one keep-alive connection: every answer leaves it usable
    check(status, document, obj)
