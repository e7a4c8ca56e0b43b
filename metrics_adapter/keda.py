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

GetMetricSpec asks for an AverageValue target of 1, so KEDA's HPA wants ceil(value / 1) =
the decided replicas. Nothing decided (or only decisions too old to serve) is an UNAVAILABLE
error, never a 0: KEDA then keeps the current scale (or its fallback), as an HPA holds its scale
on a failed metric; more than one matching decision is an INVALID_ARGUMENT naming the revisions.
IsActive is whether the decided value is above 0 (KEDA's 0 <-> 1 step).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from autoscaler.decision_metrics import FIGURES
from autoscaler.decision_stream import MutualTLS
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


def _metric_of(ref: pb.ScaledObjectRef) -> str:
    """The figure the trigger asks for, after checking that it names an ISVC."""
    if not ref.scalerMetadata.get("isvc"):
        raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, "the trigger's metadata needs `isvc`: the InferenceService's name")
    metric = ref.scalerMetadata.get("metric", DEFAULT_METRIC)
    if metric not in FIGURES:
        raise ScalerError(grpc.StatusCode.INVALID_ARGUMENT, f"metadata metric {metric!r}: one of {', '.join(sorted(FIGURES))}")
    return metric


def lookup(store: MetricStore, ref: pb.ScaledObjectRef) -> Series:
    """The one decision series the trigger names; a ScalerError saying why when not exactly one."""
    metric, metadata = _metric_of(ref), ref.scalerMetadata
    isvc = metadata["isvc"]
    namespace = metadata.get("namespace") or ref.namespace
    requirements = [Requirement("isvc", Operator.EQUALS, (isvc,))]
    if metadata.get("revision"):
        requirements.append(Requirement("revision", Operator.EQUALS, (metadata["revision"],)))
    found = store.series(namespace, metric, Selector(tuple(requirements)))
    if not found:
        raise ScalerError(grpc.StatusCode.UNAVAILABLE, f"no current decision for {namespace}/{isvc} (yet): scale kept")
    if len(found) > 1:
        revisions = ", ".join(sorted(s.labels.get("revision", "") for s in found))
        raise ScalerError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{namespace}/{isvc} has a decision per revision ({revisions}): name one in `revision`",
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
            metric = _metric_of(request)
            return pb.GetMetricSpecResponse(metricSpecs=[pb.MetricSpec(metricName=metric, targetSize=1, targetSizeFloat=TARGET)])

        return await self._answer(context, spec)

    async def GetMetrics(self, request: pb.GetMetricsRequest, context) -> pb.GetMetricsResponse:  # noqa: N802
        def metrics() -> pb.GetMetricsResponse:
            value = lookup(self.store, request.scaledObjectRef).value
            name = request.metricName or _metric_of(request.scaledObjectRef)
            # the int field too, for a KEDA that reads it: KEDA takes the float only when above 0
            return pb.GetMetricsResponse(
                metricValues=[pb.MetricValue(metricName=name, metricValue=round(value), metricValueFloat=value)]
            )

        return await self._answer(context, metrics)


async def serve_keda(
    store: MetricStore, address: str, tls: MutualTLS | None = None, push_interval_s: float = 1.0
) -> grpc.aio.Server:
    """Start the ExternalScaler on `address` (host:port, port 0 for any); returns the server, its
    port in `bound_port`. Without `tls` it is plaintext: only for a loopback address."""
    server = grpc.aio.server()
    pb_grpc.add_ExternalScalerServicer_to_server(KedaScaler(store, push_interval_s), server)
    port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    await server.start()
    server.bound_port = port  # type: ignore[attr-defined]
    log.info("KEDA external scaler on %s (%s)", address, "mutual TLS" if tls else "plaintext")
    return server
