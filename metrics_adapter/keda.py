"""KEDA's External Scaler gRPC service (autoscaler/proto/externalscaler.proto) on the adapter's
decisions, for clusters whose one `v1beta1.external.metrics.k8s.io` APIService is KEDA's.

A ScaledObject trigger of type `external` (polled) or `external-push` (also StreamIsActive)
with `scalerAddress` at the adapter names the ISVC in its metadata:

| metadata | meaning |
|---|---|
| `isvc` | the InferenceService (required) |
| `namespace` | its namespace (default: the ScaledObject's) |
| `revision` | the Knative revision, where the ISVC has several |
| `metric` | one of decision_metrics.FIGURES (default `desired_replicas`) |

KServe's own `autoscalerClass: keda` path writes its `external` trigger from a PodMetric of backend
`opentelemetry` (KServe v0.20 pkg/controller/v1beta1/inferenceservice/reconcilers/keda): metadata
`scalerAddress` (the metric's serverAddress) and `metricQuery: sum(<query>{namespace="<ns>",
deployment="<Deployment>"})`, naming the predictor's Deployment, not the ISVC. Such a trigger is
read as `metric` = `<query>` and the ISVC whose Deployment that is: `{isvc}-predictor` or
`{isvc}-{name}-predictor`; when the name alone fits the decisions of more than one ISVC, the
answer is an INVALID_ARGUMENT naming them. Its `targetValue` is not read: the target is always 1.

GetMetricSpec asks for an AverageValue target of 1, so KEDA's HPA wants ceil(value / 1) =
the decided replicas. Nothing decided (or only decisions too old to serve) is an UNAVAILABLE
error, never a 0: KEDA then keeps the current scale (or its fallback), as an HPA holds its scale
on a failed metric; more than one matching decision is an INVALID_ARGUMENT naming the revisions.
IsActive is whether the decided value is above 0 (KEDA's 0 <-> 1 step).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from autoscaler.decision_metrics import FIGURES
from autoscaler.decision_stream import MutualTLS
from autoscaler.grpc_server import GrpcServer, serve
from autoscaler.proto import externalscaler_pb2 as pb
from autoscaler.proto import externalscaler_pb2_grpc as pb_grpc

from .selectors import Operator, Requirement, Selector
from .store import MetricStore, Series

log = logging.getLogger(__name__)
DEFAULT_METRIC = "desired_replicas"
TARGET = 1.0  # AverageValue 1: the HPA's desired replicas are the metric's value


class ScalerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


# the metadata KServe writes (see above); its `<query>` is the metric's name
KSERVE_QUERY = re.compile(r'sum\((?P<metric>[a-z_]+)\{namespace="(?P<namespace>[^"]*)", deployment="(?P<deployment>[^"]*)"\}\)')
PREDICTOR_SUFFIX = "-predictor"


@dataclass(frozen=True)
class Trigger:
    """What a trigger's metadata asks for: a figure of the decision of one of `isvcs` (several
    only when a Deployment's name fits more than one ISVC)."""

    namespace: str
    metric: str
    isvcs: tuple[str, ...]
    revision: str = ""


def _isvcs_of(deployment: str) -> tuple[str, ...]:
    """The ISVCs whose predictor Deployment can be called `deployment`: `{isvc}-predictor`, or
    `{isvc}-{name}-predictor` for every split of the rest at a '-'."""
    if not deployment.endswith(PREDICTOR_SUFFIX) or len(deployment) == len(PREDICTOR_SUFFIX):
        raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"deployment {deployment!r} is no KServe predictor's")
    stem = deployment[: -len(PREDICTOR_SUFFIX)]
    return (stem, *(stem[:i] for i in range(len(stem) - 1, 0, -1) if stem[i] == "-"))


def trigger_of(ref: pb.ScaledObjectRef) -> Trigger:
    """The trigger's ask, from our metadata or from KServe's `metricQuery`; a ScalerError when it
    names no ISVC or no figure of ours."""
    metadata = ref.scalerMetadata
    if metadata.get("isvc"):
        metric = metadata.get("metric", DEFAULT_METRIC)
        trigger = Trigger(metadata.get("namespace") or ref.namespace, metric, (metadata["isvc"],), metadata.get("revision", ""))
    elif query := KSERVE_QUERY.fullmatch(metadata.get("metricQuery", "")):
        trigger = Trigger(query["namespace"] or ref.namespace, query["metric"], _isvcs_of(query["deployment"]))
    else:
        raise ScalerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the trigger's metadata needs `isvc` (the InferenceService's name) or KServe's `metricQuery`",
        )
    if trigger.metric not in FIGURES:
        raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"metric {trigger.metric!r}: one of {', '.join(sorted(FIGURES))}")
    return trigger


def lookup(store: MetricStore, ref: pb.ScaledObjectRef) -> Series:
    """The one decision series the trigger names; a ScalerError saying why when not exactly one."""
    trigger = trigger_of(ref)
    requirements = [Requirement("isvc", Operator.IN, trigger.isvcs)]
    if trigger.revision:
        requirements.append(Requirement("revision", Operator.EQUALS, (trigger.revision,)))
    found = store.series(trigger.namespace, trigger.metric, Selector(tuple(requirements)))
    named = f"{trigger.namespace}/{' or '.join(trigger.isvcs)}"
    if not found:
        raise ScalerError(grpc.StatusCode.UNAVAILABLE, f"no current decision for {named} (yet): scale kept")
    isvcs = sorted({s.labels["isvc"] for s in found})
    if len(isvcs) > 1:
        raise ScalerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the Deployment's name fits the ISVCs {', '.join(isvcs)}: name one in `isvc`",
        )
    if len(found) > 1:
        revisions = ", ".join(sorted(s.labels.get("revision", "") for s in found))
        raise ScalerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{named} has a decision per revision ({revisions}): name one in `revision`",
        )
    return found[0]


class KedaScaler(pb_grpc.ExternalScalerServicer):
    def __init__(self, store: MetricStore, push_interval_s: float = 1.0):
        self.store = store
        self.push_interval_s = push_interval_s

    async def _answer(self, context, compute):
        try:
            return compute()
        except ScalerError as exc:
            await context.abort(exc.code, str(exc))

    async def IsActive(self, request: pb.ScaledObjectRef, context) -> pb.IsActiveResponse:  # noqa: N802 - gRPC names
        return await self._answer(context, lambda: pb.IsActiveResponse(result=lookup(self.store, request).value > 0))

    async def StreamIsActive(self, request: pb.ScaledObjectRef, context) -> AsyncIterator[pb.IsActiveResponse]:  # noqa: N802
        """Each change of activity as it shows in the store (KEDA acts on every true at once; a
        false it leaves to its polling). A lookup failing meanwhile sends nothing: not a change."""
        await self._answer(context, lambda: lookup(self.store, request))  # a wrong trigger fails at once
        last = None
        while True:
            try:
                active = lookup(self.store, request).value > 0
            except ScalerError:
                active = last
            if active is not None and active != last:
                yield pb.IsActiveResponse(result=active)
                last = active
            await asyncio.sleep(self.push_interval_s)

    async def GetMetricSpec(self, request: pb.ScaledObjectRef, context) -> pb.GetMetricSpecResponse:  # noqa: N802
        def spec() -> pb.GetMetricSpecResponse:
            metric = trigger_of(request).metric
            return pb.GetMetricSpecResponse(metricSpecs=[pb.MetricSpec(metricName=metric, targetSize=1, targetSizeFloat=TARGET)])

        return await self._answer(context, spec)

    async def GetMetrics(self, request: pb.GetMetricsRequest, context) -> pb.GetMetricsResponse:  # noqa: N802
        def metrics() -> pb.GetMetricsResponse:
            value = lookup(self.store, request.scaledObjectRef).value
            name = request.metricName or trigger_of(request.scaledObjectRef).metric
            # the int field too, for a KEDA that reads it: KEDA takes the float only when above 0
            return pb.GetMetricsResponse(
                metricValues=[pb.MetricValue(metricName=name, metricValue=round(value), metricValueFloat=value)]
            )

        return await self._answer(context, metrics)


async def serve_keda(store: MetricStore, address: str, tls: MutualTLS | None = None, push_interval_s: float = 1.0) -> GrpcServer:
    """Start the ExternalScaler on `address` (host:port, port 0 for any); returns the server, its
    port in `bound_port`. Without `tls` it is plaintext: only for a loopback address."""
    scaler = KedaScaler(store, push_interval_s)
    server = await serve(lambda server: pb_grpc.add_ExternalScalerServicer_to_server(scaler, server), address, tls)
    log.info("KEDA external scaler on %s (%s)", address, "mutual TLS" if tls else "plaintext")
    return server
