"""One bad input stops nothing (issue 14, data path): a broken Prometheus sample, a hand-edited
decision annotation, a non-finite decision on the stream, a slow Prometheus or a hanging review
API are each isolated to their source; the other ISVCs, requests and decisions proceed.

The cases that need no API server are here; those through a controller cycle run on the real
kube-apiserver (tests/e2e/test_hostile_cycles.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from autoscaler.controller.catalog import cluster_data
from autoscaler.controller.collector import CollectorSettings, PrometheusCollector, bracketing_bounds, observations
from autoscaler.decision_stream import DecisionHub
from autoscaler.errors import InputError
from autoscaler.policy.decisions import LastDecision
from autoscaler.policy.observation import Observation
from autoscaler.policy.planner import PlannerState, plan
from autoscaler.controller.services import read_services
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc
from autoscaler.kube_auth import Access
from metrics_adapter.api import build_app
from metrics_adapter.auth import Gatekeeper, KubernetesReviews, RequestHeaderConfig, ReviewUnavailable, UserInfo
from metrics_adapter.feed import DecisionFeed
from metrics_adapter.selectors import parse_selector
from metrics_adapter.store import MetricStore

from .cluster_objects import data_configmap, isvc
from .test_controller_planning import CAPACITY, DATA, observed
from .test_decision_stream import T0, decision
from .test_metrics_adapter_https import serve

GOOD = LastDecision("H100", 3, 64, 150.0, 20.0, 5.0, 12.0, 1000.0, 512, 256)
BAD_VALUES = [
    ("accelerator", "NOPE"),
    ("replicas", "3"),
    ("replicas", 2.5),
    ("replicas", 3e9),
    ("replicas", -5),
    ("replicas", True),
    ("arrival_rate", float("nan")),
    ("cost", float("-inf")),
    ("ttft_scale", float("nan")),
    ("itl_scale", 1e308),
    ("max_batch", -1),
    ("decided_at", float("inf")),
    ("avg_out_tokens", 1e300),
]


class StoredDecisions(dict):
    """Decision texts by ISVC uid, answered as the controller's DecisionStore.read answers."""

    def __call__(self, uid: str) -> tuple[str, str] | None:
        return (self[uid], "1") if uid in self else None


STORED = StoredDecisions()


@pytest.fixture(autouse=True)
def _no_stored_decisions():
    STORED.clear()


def stored(obj: dict, decision: str) -> dict:
    """The ISVC, with `decision` as the controller's stored decision for it (in STORED): the
    values are what is under test here."""
    meta = obj["metadata"]
    meta.setdefault("uid", f"uid-of-{meta['name']}")  # as the API server gives one
    STORED[meta["uid"]] = decision
    return obj


def annotation(field: str, value) -> str:
    fields = json.loads(GOOD.to_json()) | {field: value}
    return json.dumps(fields)  # NaN and Infinity as Python writes them: valid to json.loads


def assert_sane(decision: LastDecision | None) -> None:
    assert decision is None or decision.problem() is None, decision


# -- the collector's parsing --------------------------------------------------------------------


def results(bad: dict[str, object], namespace: str = "prod") -> dict:
    """Query results for chat (sound) and code (with `bad` figures or bucket samples)."""
    keys = ({"namespace": namespace, "isvc": "chat"}, {"namespace": namespace, "isvc": "code"})

    def figure(name, value):
        return [{"metric": k, "value": [0, str(bad.get(name, value) if k["isvc"] == "code" else value)]} for k in keys]

    def buckets(name):
        sound = [("0.1", "500"), ("1", "590"), ("+Inf", "600")]
        rows = []
        for k in keys:
            pairs = bad.get(name, sound) if k["isvc"] == "code" else sound
            rows += [{"metric": k | {"le": le}, "value": [0, str(c)]} for le, c in pairs]
        return rows

    return {
        "completed": figure("completed", 600),
        "completed_before": figure("completed_before", 600),
        "growth": figure("growth", 0),
        "growth_before": figure("growth_before", 0),
        "running": figure("running", 10),
        "waiting": figure("waiting", 0),
        "prompt_tokens": figure("prompt_tokens", 600 * 500),
        "prompt_len": figure("prompt_len", 500),
        "output_len": figure("output_len", 200),
        "ttft_sum": figure("ttft_sum", 60),
        "itl_sum": figure("itl_sum", 6),
        "itl_count": figure("itl_count", 600 * 199),
        "ttft_buckets": buckets("ttft_buckets"),
        "tpot_buckets": buckets("tpot_buckets"),
    }


# code's figures or bucket samples broken, one way each (tests/e2e/test_hostile_cycles.py runs
# them through a real controller cycle)
BROKEN_SAMPLES = [
    {"ttft_buckets": [("0.1", "500"), ("1", "590"), ("+Inf", "NaN")]},
    {"ttft_buckets": [("0.1", "500"), ("1", "590"), ("+Inf", "+Inf")]},
    {"tpot_buckets": [("0.1", "500"), ("abc", "590"), ("+Inf", "600")]},
    {"tpot_buckets": [("0.1", "500"), ("1", "590"), ("+Inf", "1e308")]},
    {"ttft_buckets": [("0.1", "-5"), ("1", "590"), ("+Inf", "600")]},
    {"completed": "1e308"},
    {"completed": "NaN"},
    {"running": "+Inf"},
    {"prompt_tokens": "1e308"},
    {"growth": "-1e308"},
]


def finite_observation(obs: Observation) -> bool:
    numbers = [obs.arrival_rate, obs.previous_rate, obs.running, obs.waiting]
    numbers += [v for v in (obs.avg_in_tokens, obs.avg_out_tokens, obs.ttft_ms, obs.itl_ms) if v is not None]
    numbers += [c for b in (obs.ttft_buckets, obs.tpot_buckets) for _, c in b]
    return all(math.isfinite(v) and v >= 0 for v in numbers[2:]) and all(math.isfinite(v) for v in numbers[:2])


@pytest.mark.parametrize("bad", BROKEN_SAMPLES, ids=lambda bad: json.dumps(bad))
def test_one_isvcs_broken_samples_never_stop_the_others(bad, caplog):
    with caplog.at_level(logging.ERROR):
        observed_now = observations(results(bad), CollectorSettings())
    assert observed_now[("prod", "chat")].arrival_rate == pytest.approx(10.0)  # the sound one: read as always
    assert observed_now[("prod", "chat")].ttft_buckets[-1] == (math.inf, 600.0)
    assert all(finite_observation(o) for o in observed_now.values())
    assert "prod/code" in caplog.text and "prod/chat" not in caplog.text  # one clear line, naming the offender
    services, _ = read_services([isvc("chat", "llama_13b"), isvc("code", "llama_7b")], DATA.catalog, STORED)
    plans = plan(DATA.catalog, CAPACITY, services, observed_now, 1000.0, PlannerState())
    assert {p.service.name for p in plans if p.decision is not None} >= {"chat"}
    for p in plans:
        assert_sane(p.decision)


def test_unparsable_bucket_bounds_are_skipped_when_learning_them():
    assert bracketing_bounds(["0.1", "abc", "NaN", "1", "+Inf"], {0.5}) == "0\\.1|1|\\+Inf"


# -- the decision annotation --------------------------------------------------------------------


@pytest.mark.parametrize("field, value", BAD_VALUES, ids=lambda v: repr(v))
def test_a_decision_annotation_with_bad_values_is_refused_with_one_clear_error(field, value, caplog):
    good = stored(isvc("chat", "llama_13b"), GOOD.to_json())
    bad = stored(isvc("code", "llama_7b"), annotation(field, value))
    with caplog.at_level(logging.ERROR):
        services, rejected = read_services([good, bad], DATA.catalog, STORED)
    by_name = {s.name: s for s in services}
    assert not rejected and by_name["chat"].last == GOOD and by_name["code"].last is None
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "prod/code" in line and field in line


def test_a_remembered_replica_count_outside_the_isvcs_bounds_is_brought_within_them():
    services, _ = read_services([stored(isvc("chat", "llama_13b"), annotation("replicas", 50))], DATA.catalog, STORED)
    assert services[0].last.replicas == 20  # max-replicas of the ISVC


def test_the_planner_never_emits_a_decision_from_bad_state_or_observations():
    """Whatever slips past the boundaries (the simulator builds these types itself) stays with its ISVC."""
    services, _ = read_services([isvc("chat", "llama_13b"), isvc("code", "llama_7b")], DATA.catalog, STORED)
    from dataclasses import replace

    nan = float("nan")
    services[1] = replace(services[1], last=replace(GOOD, ttft_scale=nan, arrival_rate=nan))
    broken = replace(observed(5.0), ttft_buckets=((0.1, 5.0), (math.inf, nan)), waiting=math.inf)
    plans = plan(
        DATA.catalog, CAPACITY, services, {("prod", "chat"): observed(5.0), ("prod", "code"): broken}, 1000.0, PlannerState()
    )
    chat, code = plans
    assert chat.decision is not None and not chat.stale
    for p in plans:
        assert_sane(p.decision)
    assert code.decision is None or code.decision.problem() is None


def test_the_optimizer_failing_on_one_isvcs_figures_leaves_the_others_decided(monkeypatch, caplog):
    import autoscaler.policy.planner as planner

    real = planner.solve

    def failing_on_code(system):  # as the optimizer once did on a denormal rate: 5e-324 req/s
        if any(s.name == "prod/code" for s in system.servers):
            raise ZeroDivisionError("float division by zero")
        return real(system)

    monkeypatch.setattr(planner, "solve", failing_on_code)
    good = isvc("chat", "llama_13b")
    services, _ = read_services([good, stored(isvc("code", "llama_7b"), GOOD.to_json())], DATA.catalog, STORED)
    observed_now = {("prod", "chat"): observed(5.0), ("prod", "code"): observed(5.0)}
    with caplog.at_level(logging.ERROR):
        chat, code = plan(DATA.catalog, CAPACITY, services, observed_now, 1000.0, PlannerState())
    assert chat.decision is not None and not chat.stale
    assert code.stale and code.decision == GOOD and "optimizer failed" in code.reason
    assert "prod/code" in caplog.text and "prod/chat" not in caplog.text


# -- the decision stream and /metrics -----------------------------------------------------------


def broken_decisions() -> list[pb.Decision]:
    out = []
    for i, (field, value) in enumerate(
        [
            ("arrival_rate", float("nan")),
            ("cost_per_hour", float("inf")),
            ("ttft_headroom", float("-inf")),
            ("decided_at", float("nan")),
            ("desired_replicas", -5),
            ("max_batch", -1),
            ("arrival_rate", -1.0),
        ]
    ):
        d = decision(f"bad{i}")
        setattr(d, field, value)
        out.append(d)
    return out


def test_the_hub_publishes_no_decision_with_a_bad_value(caplog):
    hub = DecisionHub()
    with caplog.at_level(logging.ERROR):
        hub.publish([decision()] + broken_decisions())
    assert [d.isvc for d in hub.current()] == ["chat"]
    assert caplog.text.count("not published") == len(broken_decisions())


def served(store: MetricStore, metric="desired_replicas") -> dict[str, str]:
    return {
        json.loads(i)["metricLabels"]["isvc"]: json.loads(i)["value"] for i in store.query("prod", metric, parse_selector(""))
    }


def test_the_feed_drops_a_bad_decision_and_goes_on(caplog):
    store = MetricStore(clock=lambda: T0)
    feed = DecisionFeed("unused:1", store)
    with caplog.at_level(logging.ERROR):
        feed.apply(pb.DecisionEvent(snapshot=pb.Snapshot(decisions=[decision()] + broken_decisions())))
        assert feed.synced.is_set() and served(store) == {"chat": "3"}
        for bad in broken_decisions():
            bad.isvc = "chat"
            feed.apply(pb.DecisionEvent(upsert=bad))
        feed.apply(pb.DecisionEvent(upsert=decision("code", 2)))
    assert served(store) == {"chat": "3", "code": "2"}  # the bad updates dropped, the last good value kept
    assert "bad0" in caplog.text


class ScriptedDecisions(pb_grpc.DecisionServiceServicer):
    """A decision service that sends what it is given, valid or not."""

    def __init__(self, events):
        self.events = events

    async def WatchDecisions(self, request, context):  # noqa: N802
        for event in self.events:
            await context.write(event)
        await asyncio.Event().wait()


async def test_a_non_finite_value_on_the_stream_never_stops_the_feed_and_readyz_tells_a_stopped_one():
    import grpc

    bad = decision("chat")
    bad.arrival_rate = float("nan")
    events = [pb.DecisionEvent(snapshot=pb.Snapshot(decisions=[bad, decision("code", 2)]))]
    events += [pb.DecisionEvent(upsert=bad), pb.DecisionEvent(upsert=decision("chat", 4))]
    server = grpc.aio.server()
    pb_grpc.add_DecisionServiceServicer_to_server(ScriptedDecisions(events), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    store = MetricStore(clock=lambda: T0)
    feed = DecisionFeed(f"127.0.0.1:{port}", store, initial_backoff_s=0.05)
    task = asyncio.create_task(feed.run())
    app = build_app(store, lambda *a: asyncio.sleep(0), feed.ready)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        deadline = time.monotonic() + 5
        while served(store) != {"chat": "4", "code": "2"}:
            assert time.monotonic() < deadline, served(store)
            await asyncio.sleep(0.02)
        assert (await client.get("/readyz")).status == 200
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert (await client.get("/readyz")).status == 503  # the feed is gone: not ready, whatever it had
    finally:
        await client.close()
        await server.stop(None)


# -- a slow Prometheus never stalls Kubernetes I/O ----------------------------------------------


async def test_a_hanging_prometheus_leaves_the_default_executor_to_the_api_clients_lookups():
    async def hang(request):
        await asyncio.sleep(5)  # past the collector's timeout
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    runner, port = await serve(app)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2))  # what getaddrinfo and friends run on
    collector = PrometheusCollector(f"http://127.0.0.1:{port}", timeout_s=2)
    collecting = asyncio.create_task(collector.collect())
    try:
        await asyncio.sleep(0.3)
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "looked up"), 1.0) == "looked up"
    finally:
        await asyncio.gather(collecting, return_exceptions=True)
        await runner.cleanup()


# -- the adapter's reviews ----------------------------------------------------------------------


class ReviewApi:
    """A Kubernetes API answering reviews as told: 'hang', 'garbage' (not JSON), 'drop' (the
    connection closed without a reply) or 'allow'."""

    def __init__(self, token_reviews: str, access_reviews: str = "allow"):
        self.modes = {"tokenreviews": token_reviews, "subjectaccessreviews": access_reviews}
        self.release = asyncio.Event()  # ends every hanging reply, so the server stops at once

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.path.rsplit("/", 1)[-1]
        mode = self.modes[kind]
        body = await request.json()
        if mode == "hang":
            await self.release.wait()
        if mode == "garbage":
            return web.Response(text="<html>502 bad gateway</html>", content_type="application/json")
        if mode == "drop":
            request.transport.close()
            await asyncio.sleep(1)
        if kind == "tokenreviews":
            body["status"] = {"authenticated": True, "user": {"username": "hpa", "groups": ["system:authenticated"]}}
        else:
            body["status"] = {"allowed": True}
        return web.json_response(body)

    async def reviews(self, **options) -> KubernetesReviews:
        from kubernetes_asyncio import client

        app = web.Application()
        app.router.add_post("/apis/{group}/v1/{kind}", self.handle)
        runner, port = await serve(app)
        self.runner = runner
        return KubernetesReviews(client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{port}")), **options)

    async def close(self, reviews: KubernetesReviews) -> None:
        self.release.set()
        await reviews.api_client.close()
        await self.runner.cleanup()


@pytest.mark.parametrize("mode", ["garbage", "drop"])
async def test_a_non_json_or_dropped_review_reply_is_a_503(mode):
    api = ReviewApi(mode)
    reviews = await api.reviews()
    app = build_app(MetricStore(), Gatekeeper(RequestHeaderConfig(), reviews).authorize)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        response = await client.get("/apis/external.metrics.k8s.io/v1beta1", headers={"Authorization": "Bearer t"})
        assert response.status == 503 and (await response.json())["reason"] == "ServiceUnavailable"
    finally:
        await client.close()
        await api.close(reviews)


async def test_reviews_time_out():
    api = ReviewApi("hang")
    reviews = await api.reviews(timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ReviewUnavailable):
            await reviews.token_review("t")
        assert time.monotonic() - started < 5
    finally:
        await api.close(reviews)


HPA_ACCESS = Access("list", group="external.metrics.k8s.io", version="v1beta1", resource="desired_replicas", namespace="prod")


async def test_a_hanging_api_server_and_random_tokens_never_starve_the_hpas_access_review():
    api = ReviewApi("hang")
    reviews = await api.reviews(timeout_s=30)
    flood = [asyncio.create_task(reviews.token_review(f"random-{i}")) for i in range(300)]
    try:
        await asyncio.sleep(0.5)
        allowed, _ = await asyncio.wait_for(reviews.access_review(UserInfo("hpa"), HPA_ACCESS), 3)
        assert allowed
        # beyond the bound, random tokens are turned away at once (503), not queued
        assert sum(t.done() and isinstance(t.exception(), ReviewUnavailable) for t in flood) >= 200
    finally:
        for task in flood:
            task.cancel()
        await asyncio.gather(*flood, return_exceptions=True)
        await api.close(reviews)


# -- the data ConfigMap -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "file_name, old, new",
    [
        ("accelerator-data.json", '"cost": 6.00', '"cost": 1e308'),
        ("accelerator-data.json", '"cost": 6.00', '"cost": NaN'),
        ("model-data.json", '"alpha": 205.8', '"alpha": 1e300'),
        ("model-data.json", '"maxBatchSize": 102', '"maxBatchSize": 1e15'),
        ("model-data.json", '"accCount": 2', '"accCount": 1e13'),
    ],
)
def test_out_of_range_numbers_in_the_data_configmap_are_refused_naming_the_field(file_name, old, new):
    configmap = data_configmap()
    assert old in configmap["data"][file_name]
    configmap["data"][file_name] = configmap["data"][file_name].replace(old, new, 1)
    with pytest.raises(InputError) as error:
        cluster_data(configmap, "ConfigMap x")
    assert file_name in str(error.value) and new.split(":")[0].strip('"') in str(error.value)


# -- the adapter's Prometheus source ------------------------------------------------------------


async def fake_prometheus(answer) -> tuple[web.AppRunner, str]:
    async def query(request):
        return await answer(request)

    app = web.Application()
    app.router.add_route("*", "/api/v1/query", query)
    runner, port = await serve(app)
    return runner, f"http://127.0.0.1:{port}"


async def test_the_adapters_prometheus_source_skips_non_finite_samples(caplog):
    from metrics_adapter.prometheus_source import PrometheusSource

    def sample(isvc, value):
        return {"metric": {"namespace": "prod", "isvc": isvc}, "value": [T0, value]}

    async def answer(request):
        result = [sample("chat", "3"), sample("nan", "NaN"), sample("inf", "+Inf"), sample("abc", "abc"), {"metric": None}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    runner, url = await fake_prometheus(answer)
    try:
        with caplog.at_level(logging.ERROR):
            items = await PrometheusSource(url).items("prod", "desired_replicas", parse_selector(""))
        assert [json.loads(i)["metricLabels"]["isvc"] for i in items] == ["chat"]
        assert "4 unusable samples" in caplog.text
    finally:
        await runner.cleanup()


async def test_the_adapters_prometheus_source_times_out_on_its_own_threads():
    from metrics_adapter.api import SourceUnavailable
    from metrics_adapter.prometheus_source import PrometheusSource

    release = asyncio.Event()

    async def answer(request):
        await release.wait()
        return web.json_response({})

    runner, url = await fake_prometheus(answer)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
    source = PrometheusSource(url, timeout_s=1)
    asking = [asyncio.create_task(source.items("prod", "desired_replicas", parse_selector(""))) for _ in range(4)]
    try:
        await asyncio.sleep(0.3)
        assert await asyncio.wait_for(loop.run_in_executor(None, lambda: "looked up"), 1.0) == "looked up"
        for outcome in await asyncio.wait_for(asyncio.gather(*asking, return_exceptions=True), 5):
            assert isinstance(outcome, SourceUnavailable)
    finally:
        release.set()
        await runner.cleanup()


def test_an_observation_without_a_ready_replica_count_is_usable_and_a_bad_one_is_not():
    """The collector knows no ready-replica count (the simulator does): None is no problem."""
    from dataclasses import replace

    assert observed(5.0).ready_replicas is None and observed(5.0).problem() is None
    assert replace(observed(5.0), ready_replicas=float("nan")).problem().startswith("ready_replicas")
