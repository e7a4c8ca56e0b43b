"""Hostile bodies for the webhook: nesting, digit runs and value counts past the bounds are
refused with a 400 and the reason before the json module sees them (webhook/bounded_json.py)."""

import base64
import json

import pytest

from autoscaler.annotations import PREFIX
from autoscaler.errors import InputError
from webhook import bounded_json
from webhook.review import SCHEDULING_GATE
from webhook.server import DEFAULT_CLASSES, answer, load_classes

from .jsonpatch import apply_patch
from .test_webhook import MANAGED, REVISION_POD, admission, isvc, pod


def with_field(value: bytes) -> bytes:
    """An otherwise valid Pod review whose object carries `value` as raw JSON."""
    return json.dumps(admission(pod(*REVISION_POD) | {"x": "@@"}, kind="Pod")).encode().replace(b'"@@"', value)


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "nested deeper than 100 levels"),
        (b"[" * 10_000 + b"]" * 10_000, "nested deeper than 100 levels"),
        (with_field(b"[" * 101 + b"]" * 101), "nested deeper than 100 levels"),
        (with_field(b"9" * 5_000), "more than 40 digits"),
        (with_field(b"1." + b"0" * 4_300), "more than 40 digits"),
        (with_field(b"1e" + b"9" * 41), "more than 40 digits"),
        (with_field(b"[" + b"{}," * 200_000 + b"{}]"), "more than 200,000 values"),
    ],
)
def test_bodies_past_a_bound_are_400_with_the_reason(body, reason):
    status, document = answer(body, DEFAULT_CLASSES)
    assert status == 400 and reason in document["error"]


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_constants_are_400(constant):
    status, document = answer(with_field(constant), DEFAULT_CLASSES)
    assert status == 400 and "is not JSON" in document["error"]


def test_brackets_and_digits_inside_strings_do_not_count():
    obj = isvc(MANAGED | {"note": "[" * 500 + "9" * 500 + '\\"{' * 100, "braces": "}" * 50})
    status, review = answer(json.dumps(admission(obj)).encode(), DEFAULT_CLASSES)
    assert status == 200 and review["response"]["allowed"]


def test_the_bounds_leave_room_for_real_objects():
    deep = {}
    for _ in range(bounded_json.MAX_DEPTH - 5):
        deep = {"d": deep}
    obj = pod(*REVISION_POD) | {"x": deep, "n": [2**63 - 1, -(2**63), 1.7976931348623157e308, 5e-324]}
    status, review = answer(json.dumps(admission(obj, kind="Pod")).encode(), DEFAULT_CLASSES)
    assert status == 200 and review["response"]["allowed"] and "patch" in review["response"]


def test_unterminated_strings_and_stray_quotes_are_just_not_json():
    for body in (b'{"a": "[[[[', b'"', b'{"a\\', b"\xff\xfe{}"):
        status, document = answer(body, DEFAULT_CLASSES)
        assert status == 400


@pytest.mark.parametrize(
    "extra, message",
    [
        ({PREFIX + "max-replicas": "9" * 4_300}, "max-replicas: at most 1000, got a number of 4300 digits"),
        ({PREFIX + "max-replicas": "1001"}, "max-replicas: at most 1000, got 1001"),
        ({PREFIX + "min-replicas": "２"}, "min-replicas: expected a whole number (ASCII digits), got '２'"),
        ({PREFIX + "max-replicas": "٣"}, "max-replicas: expected a whole number (ASCII digits), got '٣'"),
        ({PREFIX + "progress-deadline": "６００"}, "progress-deadline: expected a whole number (ASCII digits)"),
        ({PREFIX + "progress-deadline": "9" * 100}, "progress-deadline: at most 3600 seconds, got a number of 100 digits"),
    ],
)
def test_annotation_numbers_are_ascii_and_bounded(extra, message):
    status, review = answer(json.dumps(admission(isvc(MANAGED | extra))).encode(), DEFAULT_CLASSES)
    response = review["response"]
    assert status == 200 and response["allowed"] is False and "patch" not in response
    assert message in response["status"]["message"]


def test_the_replica_bound_itself_is_accepted():
    obj = isvc(MANAGED | {PREFIX + "max-replicas": "1000", PREFIX + "min-replicas": " 0 "})
    _, review = answer(json.dumps(admission(obj)).encode(), DEFAULT_CLASSES)
    assert review["response"]["allowed"] and "patch" in review["response"]


@pytest.mark.parametrize(
    "classes", [{"A": {"maxReplicas": True}}, {"A": {"maxReplicas": 10**4000}}, {"A": {"minReplicas": 2, "maxReplicas": 1001}}]
)
def test_service_class_bounds_are_whole_and_bounded(tmp_path, classes):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(classes) if "10**" not in repr(classes) else '{"A": {"maxReplicas": ' + "9" * 4000 + "}}")
    with pytest.raises(InputError, match="need whole minReplicas <= maxReplicas <= 1000"):
        load_classes(path)


@pytest.mark.parametrize(
    "kind, field, expected",
    [
        ("InferenceService", {"spec": None}, lambda o: o["spec"]["predictor"]["maxReplicas"] == 10),
        ("InferenceService", {"spec": {"predictor": None}}, lambda o: o["spec"]["predictor"]["minReplicas"] == 1),
        ("Pod", {"spec": None}, lambda o: o["spec"]["schedulingGates"] == [{"name": SCHEDULING_GATE}]),
        ("Pod", {"spec": {"containers": [], "schedulingGates": []}}, lambda o: len(o["spec"]["schedulingGates"]) == 1),
    ],
)
def test_null_or_empty_members_are_replaced_so_the_patch_applies(kind, field, expected):
    obj = (isvc(MANAGED) if kind == "InferenceService" else pod(*REVISION_POD)) | field
    status, review = answer(json.dumps(admission(obj, kind=kind)).encode(), DEFAULT_CLASSES)
    assert status == 200 and expected(apply_patch(obj, json.loads(base64.b64decode(review["response"]["patch"]))))
