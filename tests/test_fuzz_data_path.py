"""Fuzzing the data path with hypothesis: whatever Prometheus answers, whatever an ISVC's decision
annotation holds, whatever arrives on the decision stream and whatever a client sends the
adapter, no exception escapes, nothing answers 5xx, and no decision carries a value that is not
finite or out of range."""

from __future__ import annotations

import asyncio
import json
import math
import urllib.parse

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autoscaler.controller.collector import CollectorSettings, instants, observations, queries
from autoscaler.controller.services import read_services
from autoscaler.decision_metrics import decision_problem, exposition
from autoscaler.decision_stream import DecisionHub
from autoscaler.policy.decisions import LastDecision
from autoscaler.policy.planner import PlannerSettings, PlannerState, plan, recall
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.kube_auth import Access
from metrics_adapter.api import BASE, build_app
from metrics_adapter.auth import Gatekeeper, RequestHeaderConfig, UserInfo
from metrics_adapter.feed import DecisionFeed
from metrics_adapter.selectors import parse_selector
from metrics_adapter.store import MetricStore

from .cluster_objects import isvc
from .test_hostile_input import StoredDecisions
from .test_controller_planning import CAPACITY, DATA

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ISVCS = ("chat", "code")
MODELS = {"chat": "llama_13b", "code": "llama_7b"}

# numbers as Prometheus, JSON and protobuf can carry them: ordinary, huge, tiny, signed, non-finite
wild_floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 600.0, 1e12, 1e308, -1e308, 5e-324]),
    st.floats(0, 1e4),
)
wild_text = st.one_of(
    wild_floats.map(repr),
    st.sampled_from(["NaN", "+Inf", "-Inf", "abc", "", "1e308", "0x10", "1_000", " 5 ", "٣"]),
    st.text(max_size=8),
)


def assert_sane(decision: LastDecision | None, service=None) -> None:
    if decision is None:
        return
    assert decision.problem() is None, decision
    if service is not None:
        assert service.min_replicas <= decision.replicas <= service.max_replicas
        assert (service.model, decision.accelerator) in DATA.catalog.profiles


# -- the collector's parsing --------------------------------------------------------------------


@st.composite
def samples(draw, histogram: bool):
    labels = {"namespace": "prod", "isvc": draw(st.sampled_from(ISVCS))}
    if histogram:
        labels["le"] = draw(st.one_of(st.sampled_from(["0.1", "1", "2.5", "+Inf"]), wild_text))
    sample = {"metric": labels, "value": [0, draw(st.one_of(st.sampled_from(["0", "10", "600"]), wild_text))]}
    return draw(
        st.one_of(
            st.just(sample),
            st.sampled_from([None, 5, "x", [], {}, {"metric": None}, {"metric": labels}, {"metric": labels, "value": 7}]),
        )
    )


@st.composite
def query_results(draw):
    return {
        name: draw(st.lists(samples(name.endswith("buckets")), max_size=6))
        for name in queries(CollectorSettings())
        if draw(st.booleans())
    }


@FUZZ
@given(query_results())
def test_any_prometheus_answer_yields_only_sane_observations_and_decisions(results):
    observed = observations(results, CollectorSettings())
    assert all(obs.problem() is None for obs in observed.values())
    services, _ = read_services([isvc(name, MODELS[name]) for name in ISVCS], DATA.catalog)
    for p in plan(DATA.catalog, CAPACITY, services, observed, 1000.0, PlannerState()):
        assert_sane(p.decision, p.service)


@st.composite
def range_results(draw):
    """Range queries' answers: series whose points come at the steps or anywhere, as anything."""
    point = st.one_of(
        st.tuples(st.sampled_from([930, 960.0, "990", 1e308, float("nan"), "x", None]), wild_text).map(list),
        st.sampled_from([None, 5, "x", [], [1], [1, 2, 3], {}]),
    )
    series = st.fixed_dictionaries(
        {"metric": st.one_of(st.just({"namespace": "prod", "isvc": draw(st.sampled_from(ISVCS))}), st.none())},
        optional={"values": st.one_of(st.lists(point, max_size=4), st.sampled_from([None, 7, "x", {}]))},
    )
    anything = st.lists(st.one_of(series, st.sampled_from([None, 5, []])), max_size=3)
    return {name: draw(anything) for name in queries(CollectorSettings())}


@FUZZ
@given(range_results())
def test_any_range_answer_is_recalled_as_sane_cycles_and_the_first_plan_stays_sane(results):
    """What the controller recalls at its start (PrometheusCollector.history): each step's
    instant answers are judged as a cycle's are, the recalled cycles never break the plan."""
    services, _ = read_services([isvc(name, MODELS[name]) for name in ISVCS], DATA.catalog)
    state = PlannerState()
    steps = instants(results, 900.0, 990.0)
    assert [at for at, _ in steps] == sorted({at for at, _ in steps}) and all(900.0 <= at <= 990.0 for at, _ in steps)
    for at, named in steps:
        observed = observations(named, CollectorSettings())
        assert all(obs.problem() is None for obs in observed.values())
        recall(DATA.catalog, services, observed, at, state, PlannerSettings())
    for p in plan(DATA.catalog, CAPACITY, services, {}, 1000.0, state):
        assert_sane(p.decision, p.service)


# -- the decision state: annotation -> LastDecision -> plan --------------------------------------

GOOD = json.loads(LastDecision("H100", 3, 64, 150.0, 20.0, 5.0, 12.0, 900.0, 512, 256).to_json())
any_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), wild_floats, st.text(max_size=6)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def annotations(draw):
    fields = dict(GOOD)
    for name in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=4)):
        fields[name] = draw(st.one_of(any_json, st.sampled_from(["NOPE", "A100", "L40S", 2**31, 3e9, -5, 2.5, "3"])))
    for name in draw(st.lists(st.sampled_from(sorted(GOOD)), max_size=2)):
        fields.pop(name, None)
    return draw(st.one_of(st.just(json.dumps(fields)), st.text(max_size=20), any_json.map(json.dumps)))


@FUZZ
@given(annotations(), st.one_of(st.none(), st.floats(0, 50)), st.sampled_from([("0", "4"), ("1", "20"), ("2", "2")]))
def test_any_stored_decision_yields_only_sane_decisions(text, rate, bounds):
    from .test_controller_planning import observed as observation

    decisions = StoredDecisions()
    obj = isvc("chat", "llama_13b", min_replicas=bounds[0], max_replicas=bounds[1])
    obj["metadata"]["uid"] = "uid-chat"
    decisions["uid-chat"] = text
    [service], rejected = read_services([obj], DATA.catalog, decisions)
    assert not rejected
    assert_sane(service.last, service)
    observed = {} if rate is None else {("prod", "chat"): observation(rate)}
    state = PlannerState()
    for now in (1000.0, 1030.0):  # a second cycle resumes from the first's state
        [result] = plan(DATA.catalog, CAPACITY, [service], observed, now, state)
        assert_sane(result.decision, service)


# -- the stream: proto -> feed -> store ---------------------------------------------------------


@st.composite
def decisions(draw):
    d = pb.Decision(
        namespace=draw(st.sampled_from(["prod", "", "other"])),
        isvc=draw(st.sampled_from(["chat", "code", ""])),
        revision=draw(st.sampled_from(["", "chat-00001"])),
        model=draw(st.text(max_size=5)),
        accelerator=draw(st.text(max_size=5)),
        service_class=draw(st.text(max_size=5)),
        desired_replicas=draw(st.integers(-(2**31), 2**31 - 1)),
        max_batch=draw(st.integers(-(2**31), 2**31 - 1)),
    )
    for name in ("arrival_rate", "cost_per_hour", "ttft_headroom", "itl_headroom", "decided_at"):
        setattr(d, name, draw(st.one_of(wild_floats, st.just(1.8e9))))
    return pb.Decision.FromString(d.SerializeToString())  # as it arrives off the wire


@st.composite
def events(draw):
    kind = draw(st.sampled_from(["snapshot", "upsert", "removed"]))
    if kind == "snapshot":
        event = pb.DecisionEvent(snapshot=pb.Snapshot(decisions=draw(st.lists(decisions(), max_size=4))))
    elif kind == "upsert":
        event = pb.DecisionEvent(upsert=draw(decisions()))
    else:
        event = pb.DecisionEvent(removed=pb.DecisionKey(namespace="prod", isvc=draw(st.sampled_from(["chat", "code"]))))
    return pb.DecisionEvent.FromString(event.SerializeToString())


@FUZZ
@given(st.lists(events(), min_size=1, max_size=8))
def test_any_stream_serves_only_finite_values_and_the_feed_goes_on(stream):
    store = MetricStore(clock=lambda: 1.8e9)
    feed = DecisionFeed("unused:1", store)
    for event in stream:
        feed.apply(event)
    for namespace in ("prod", "other", ""):
        for metric in ("desired_replicas", "arrival_rate", "cost_per_hour", "ttft_slo_headroom", "itl_slo_headroom"):
            for item in store.query(namespace, metric, parse_selector("")):
                value = json.loads(item)["value"]
                assert value.lstrip("-").removesuffix("m").isdigit(), value
                if metric == "desired_replicas":
                    assert not value.startswith("-")


@FUZZ
@given(st.lists(decisions(), max_size=6))
def test_the_hub_and_metrics_publish_only_sane_decisions(batch):
    hub = DecisionHub()
    hub.publish(batch)
    assert all(decision_problem(d) is None for d in hub.current())
    # lines end at "\n" only: str.splitlines() would also cut at \x0b, \x1c-\x1e, \x85, \u2028...,
    # which the text format leaves unescaped in a label value
    for line in exposition(hub.current()).split("\n"):
        if line and not line.startswith("#"):
            assert math.isfinite(float(line.rsplit(" ", 1)[1]))


# -- the adapter's requests ---------------------------------------------------------------------


class InMemoryReviews:
    """Token "good" is the HPA; any other token is nobody; the HPA may read namespace prod."""

    async def token_review(self, token: str) -> UserInfo | None:
        return UserInfo("hpa") if token == "good" else None

    async def access_review(self, user: UserInfo, access: Access) -> tuple[bool, str]:
        return access.namespace in ("prod", ""), ""


printable = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
segment = st.one_of(st.sampled_from(["prod", "desired_replicas", "namespaces", "..", "%", "", "a b"]), st.text(max_size=12))
selector = st.one_of(
    st.sampled_from(["", "isvc=chat", "isvc in (chat,code)", "!stale", "isvc notin (", "a>1", "=", "x" * 300]),
    st.lists(st.sampled_from(list("abc=!,() <>-._/x1é") + [" in ", " notin "]), max_size=15).map("".join),
)


@st.composite
def requests(draw):
    shape = draw(st.sampled_from(["values", "discovery", "any"]))
    if shape == "values":
        path = f"{BASE}/namespaces/{urllib.parse.quote(draw(segment), safe='')}/{urllib.parse.quote(draw(segment), safe='')}"
    elif shape == "discovery":
        path = draw(st.sampled_from([BASE, "/apis/external.metrics.k8s.io", "/readyz", "/healthz", "/openapi/v2"]))
    else:
        first = draw(segment.filter(bool))  # "//x" would read as another host
        path = "/" + "/".join(urllib.parse.quote(s, safe="") for s in [first] + draw(st.lists(segment, max_size=4)))
    headers = {
        "Authorization": draw(st.one_of(st.just("Bearer good"), printable.map(lambda t: "Bearer " + t), printable)),
        "Accept": draw(st.sampled_from(["application/json", "application/vnd.kubernetes.protobuf", "*/*", "x"])),
    }
    headers.update(draw(st.dictionaries(st.sampled_from(["X-Remote-User", "X-Remote-Group", "X-Remote-Extra-a"]), printable)))
    return path, {"labelSelector": draw(selector)}, headers


async def _ask(batch) -> list[int]:
    store = MetricStore(clock=lambda: 1.8e9)
    feed = DecisionFeed("unused:1", store)
    d = pb.Decision(namespace="prod", isvc="chat", model="m", accelerator="H100", service_class="c")
    d.desired_replicas, d.decided_at = 3, 1.8e9
    feed.apply(pb.DecisionEvent(snapshot=pb.Snapshot(decisions=[d])))
    client = TestClient(TestServer(build_app(store, Gatekeeper(RequestHeaderConfig(), InMemoryReviews()).authorize)))
    await client.start_server()
    try:
        codes = []
        for path, query, headers in batch:
            async with client.get(path, params=query, headers=headers) as response:
                codes.append(response.status)
                await response.read()
        return codes
    finally:
        await client.close()


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=10))
def test_no_request_to_the_adapter_gets_a_5xx(batch):
    codes = asyncio.run(_ask(batch))
    assert all(code < 500 for code in codes), list(zip(batch, codes, strict=True))


# -- the data ConfigMap -------------------------------------------------------------------------


def _leaves(node, path=()):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))
    else:
        yield path


@st.composite
def edited_configmaps(draw):
    from .cluster_objects import data_configmap

    configmap = data_configmap()
    file_name = draw(st.sampled_from(sorted(configmap["data"])))
    document = json.loads(configmap["data"][file_name])
    leaves = list(_leaves(document))
    for path in draw(st.lists(st.sampled_from(leaves), min_size=1, max_size=3)):
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = draw(st.one_of(wild_floats, st.integers(), any_json))
    configmap["data"][file_name] = json.dumps(document)
    return configmap


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_configmaps())
def test_any_data_configmap_edit_is_refused_with_an_input_error_or_decides_sanely(configmap):
    from autoscaler.controller.catalog import cluster_data
    from autoscaler.errors import InputError

    from .test_controller_planning import observed as observation

    try:
        data = cluster_data(configmap, "ConfigMap x")
    except InputError:
        return
    services, _ = read_services([isvc(name, MODELS[name]) for name in ISVCS], data.catalog)
    observed = {("prod", s.name): observation(5.0) for s in services}
    for p in plan(data.catalog, CAPACITY, services, observed, 1000.0, PlannerState()):
        assert_sane(p.decision)


def test_a_decision_time_past_year_9999_is_refused():
    """Found by the stream fuzz above: 253,402,300,800 (year 10000) passed the range check, then
    broke the adapter's answer (RFC 3339 has four year digits)."""
    d = pb.Decision(namespace="prod", isvc="chat", decided_at=253_402_300_800.0)
    assert "decided_at" in decision_problem(d)
    d.decided_at = 253_402_300_799.0
    assert decision_problem(d) is None
