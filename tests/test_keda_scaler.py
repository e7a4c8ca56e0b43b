"""The KEDA External Scaler (metrics_adapter/keda.py) answering a gRPC client that speaks KEDA's
externalscaler.proto. The client's messages are built here from KEDA's published contract
(../shared/KEDA.md: package, service, message and field names and numbers), not from our .proto,
so a drift of ours from KEDA's wire format fails these tests. No API server is involved: what
the controller does for an ISVC KEDA scales runs against the real kube-apiserver in
tests/e2e/test_keda_scaler.py and tests/e2e/test_kserve_standard.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import yaml

from autoscaler.kserve import KSERVE_AUTOSCALER_CLASS, predictor_deployment
from autoscaler.proto import decisions_pb2 as decisions
from metrics_adapter.feed import series_of
from metrics_adapter.keda import serve_keda
from metrics_adapter.store import MetricStore
from webhook.server import DEFAULT_CLASSES, answer

from .control_plane import ROOT
from .test_webhook import admission, patched

F = descriptor_pb2.FieldDescriptorProto


def _keda_messages() -> dict[str, type]:
    """KEDA's messages, from the contract's field table."""
    string, boolean, int64, double, message = F.TYPE_STRING, F.TYPE_BOOL, F.TYPE_INT64, F.TYPE_DOUBLE, F.TYPE_MESSAGE
    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    tables = {
        "ScaledObjectRef": [("name", 1, string), ("namespace", 2, string)],
        "IsActiveResponse": [("result", 1, boolean)],
        "GetMetricSpecResponse": [("metricSpecs", 1, message, ".externalscaler.MetricSpec", repeated)],
        "MetricSpec": [("metricName", 1, string), ("targetSize", 2, int64), ("targetSizeFloat", 3, double)],
        "GetMetricsRequest": [("scaledObjectRef", 1, message, ".externalscaler.ScaledObjectRef"), ("metricName", 2, string)],
        "GetMetricsResponse": [("metricValues", 1, message, ".externalscaler.MetricValue", repeated)],
        "MetricValue": [("metricName", 1, string), ("metricValue", 2, int64), ("metricValueFloat", 3, double)],
    }
    file = descriptor_pb2.FileDescriptorProto(name="keda_contract.proto", package="externalscaler", syntax="proto3")
    for name, fields in tables.items():
        msg = file.message_type.add(name=name)
        for field in fields:
            field_name, number, kind = field[:3]
            label = field[4] if len(field) > 4 else optional
            added = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if len(field) > 3:
                added.type_name = field[3]
        if name == "ScaledObjectRef":  # map<string, string> scalerMetadata = 3
            entry = msg.nested_type.add(name="ScalerMetadataEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=string, label=optional)
            entry.field.add(name="value", number=2, type=string, label=optional)
            msg.field.add(
                name="scalerMetadata",
                number=3,
                type=message,
                label=repeated,
                type_name=".externalscaler.ScaledObjectRef.ScalerMetadataEntry",
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"externalscaler.{name}")) for name in tables}


KEDA = _keda_messages()


class KedaClient:
    """What KEDA's external scaler client calls, method by method."""

    def __init__(self, channel: grpc.aio.Channel):
        def call(method: str, request: str, response: str, stream: bool = False):
            make = channel.unary_stream if stream else channel.unary_unary
            return make(
                f"/externalscaler.ExternalScaler/{method}",
                request_serializer=KEDA[request].SerializeToString,
                response_deserializer=KEDA[response].FromString,
            )

        self.is_active = call("IsActive", "ScaledObjectRef", "IsActiveResponse")
        self.stream_is_active = call("StreamIsActive", "ScaledObjectRef", "IsActiveResponse", stream=True)
        self.get_metric_spec = call("GetMetricSpec", "ScaledObjectRef", "GetMetricSpecResponse")
        self.get_metrics = call("GetMetrics", "GetMetricsRequest", "GetMetricsResponse")


def ref(**metadata: str):
    # KEDA sends the ScaledObject's name and namespace and the trigger's metadata as given
    return KEDA["ScaledObjectRef"](name="chat-scaledobject", namespace="prod", scalerMetadata=metadata)


def decided(store: MetricStore, replicas: int, revision: str = "", isvc: str = "chat") -> None:
    decision = decisions.Decision(
        namespace="prod", isvc=isvc, revision=revision, model="llama-3-8b", accelerator="H100", desired_replicas=replicas
    )
    decision.decided_at = time.time()
    for series in series_of(decision):
        store.upsert(series)


@pytest.fixture
async def scaler():
    store = MetricStore(stale_after_s=60, max_age_s=300)
    server = await serve_keda(store, "127.0.0.1:0", push_interval_s=0.02)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}")
    yield store, KedaClient(channel)
    await channel.close()
    await server.stop(grace=None)


async def test_keda_scales_on_the_decided_replicas(scaler):
    store, keda = scaler
    decided(store, 3)
    [spec] = (await keda.get_metric_spec(ref(isvc="chat"))).metricSpecs
    assert (spec.metricName, spec.targetSizeFloat, spec.targetSize) == ("desired_replicas", 1.0, 1)
    # KEDA strips its `s0-` prefix before asking
    request = KEDA["GetMetricsRequest"](scaledObjectRef=ref(isvc="chat"), metricName="desired_replicas")
    [value] = (await keda.get_metrics(request)).metricValues
    assert (value.metricName, value.metricValueFloat, value.metricValue) == ("desired_replicas", 3.0, 3)
    assert (await keda.is_active(ref(isvc="chat"))).result is True
    other = KEDA["GetMetricsRequest"](scaledObjectRef=ref(isvc="chat", metric="cost_per_hour"), metricName="cost_per_hour")
    assert (await keda.get_metrics(other)).metricValues[0].metricName == "cost_per_hour"
    decided(store, 0)
    assert (await keda.is_active(ref(isvc="chat"))).result is False


async def test_no_decision_is_an_error_never_a_zero_and_a_wrong_trigger_says_what_to_fix(scaler):
    store, keda = scaler
    request = KEDA["GetMetricsRequest"](scaledObjectRef=ref(isvc="chat"), metricName="desired_replicas")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await keda.get_metrics(request)
    assert missing.value.code() == grpc.StatusCode.UNAVAILABLE and "no current decision for prod/chat" in missing.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as unnamed:
        await keda.get_metric_spec(ref())
    assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "`isvc`" in unnamed.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await keda.get_metric_spec(ref(isvc="chat", metric="gpu_temperature"))
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    decided(store, 2, revision="chat-predictor-00001")
    decided(store, 4, revision="chat-predictor-00002")
    with pytest.raises(grpc.aio.AioRpcError) as several:
        await keda.is_active(ref(isvc="chat"))
    assert (
        several.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "chat-predictor-00001, chat-predictor-00002" in several.value.details()
    )
    named = KEDA["GetMetricsRequest"](
        scaledObjectRef=ref(isvc="chat", revision="chat-predictor-00002"), metricName="desired_replicas"
    )
    assert (await keda.get_metrics(named)).metricValues[0].metricValueFloat == 4.0


def kserve_ref(deployment: str, query: str = "desired_replicas"):
    """The trigger KServe v0.20 writes for a PodMetric of backend opentelemetry (its
    reconcilers/keda): the query wrapped with the namespace and the predictor's Deployment."""
    metric_query = f'sum({query}{{namespace="prod", deployment="{deployment}"}})'
    metadata = {"metricQuery": metric_query, "targetValue": "1", "scalerAddress": "adapter:9443"}
    return KEDA["ScaledObjectRef"](name=deployment, namespace="prod", scalerMetadata=metadata)


async def test_kserves_own_trigger_names_the_isvc_by_its_predictors_deployment(scaler):
    store, keda = scaler
    decided(store, 3)
    for deployment in ("chat-predictor", "chat-main-predictor", "chat-a-b-predictor"):
        request = KEDA["GetMetricsRequest"](scaledObjectRef=kserve_ref(deployment), metricName="desired_replicas")
        assert (await keda.get_metrics(request)).metricValues[0].metricValueFloat == 3.0, deployment
    [spec] = (await keda.get_metric_spec(kserve_ref("chat-predictor", "cost_per_hour"))).metricSpecs
    assert (spec.metricName, spec.targetSizeFloat) == ("cost_per_hour", 1.0)
    decided(store, 5, isvc="chat-main")  # its unnamed predictor's Deployment is chat-main-predictor too
    with pytest.raises(grpc.aio.AioRpcError) as both:
        await keda.is_active(kserve_ref("chat-main-predictor"))
    assert both.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "chat, chat-main" in both.value.details()
    for wrong in (kserve_ref("chat-deployment"), kserve_ref("chat-predictor", "gpu_temperature")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await keda.get_metric_spec(wrong)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_external_push_streams_each_change_of_activity(scaler):
    store, keda = scaler
    decided(store, 0)
    stream = keda.stream_is_active(ref(isvc="chat"))
    seen = []

    async def next_result() -> bool:
        response = await asyncio.wait_for(stream.read(), timeout=5)
        seen.append(response.result)
        return response.result

    assert await next_result() is False
    decided(store, 2)
    assert await next_result() is True  # KEDA scales from zero at once on this
    decided(store, 0)
    assert await next_result() is False
    stream.cancel()
    assert seen == [False, True, False]


def test_the_keda_samples_pass_our_webhook_and_name_what_keda_scales():
    samples = ROOT / "config" / "samples" / "keda"
    for file in ("isvc-kserve-keda.yaml", "isvc-kserve-keda-scaler.yaml"):
        kserve_keda = yaml.safe_load((samples / file).read_text())
        status, body = answer(json.dumps(admission(kserve_keda)).encode(), DEFAULT_CLASSES)
        assert status == 200 and body["response"]["allowed"] and not body["response"].get("warnings"), body
        assert patched(kserve_keda, body)["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS] == "keda"
    own, scaled_object = yaml.safe_load((samples / "scaledobject-external-push.yaml").read_text())["items"]
    status, body = answer(json.dumps(admission(own)).encode(), DEFAULT_CLASSES)
    assert status == 200 and body["response"]["allowed"] and not body["response"].get("warnings"), body
    assert patched(own, body)["metadata"]["annotations"][KSERVE_AUTOSCALER_CLASS] == "external"
    assert scaled_object["spec"]["scaleTargetRef"]["name"] == predictor_deployment(own)
    [trigger] = scaled_object["spec"]["triggers"]
    assert trigger["type"] == "external-push" and trigger["metadata"]["isvc"] == own["metadata"]["name"]
