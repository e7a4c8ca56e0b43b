"""The adapter's side of the decision stream: watch the controller, keep the store current.

On a drop the store keeps what it has (values age into 'stale', then out of service, by their
decision time), and the feed reconnects with exponential backoff and jitter; the next snapshot
replaces everything, so nothing missed while disconnected survives.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random

import grpc

from autoscaler.decision_metrics import figures_of, labels_of
from autoscaler.decision_stream import MutualTLS, decision_key
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc

from .store import MetricStore, Series

log = logging.getLogger(__name__)


def series_of(decision: pb.Decision) -> list[Series]:
    labels = labels_of(decision)
    return [Series(name, decision.namespace, labels, value, decision.decided_at) for name, value in figures_of(decision).items()]


class DecisionFeed:
    def __init__(
        self,
        target: str,
        store: MetricStore,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        tls: MutualTLS | None = None,
        server_name: str = "",
    ):
        self.target = target
        self.tls = tls  # None: plaintext, for a controller on loopback only
        self.server_name = server_name  # the name the controller's certificate must cover, if not the target's host
        self.store = store
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.synced = asyncio.Event()  # set once a snapshot has arrived: the adapter is ready
        self.connected = False
        self._series: dict[tuple, list[Series]] = {}

    def _upsert(self, decision: pb.Decision) -> None:
        key = decision_key(decision)
        for old in self._series.pop(key, ()):
            self.store.remove(old)  # labels (the accelerator, say) may have changed
        self._series[key] = series_of(decision)
        for series in self._series[key]:
            self.store.upsert(series)

    def _remove(self, key: tuple) -> None:
        for old in self._series.pop(key, ()):
            self.store.remove(old)

    def apply(self, event: pb.DecisionEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "snapshot":
            self._series = {decision_key(d): series_of(d) for d in event.snapshot.decisions}
            self.store.replace_all(s for group in self._series.values() for s in group)
            # the store's objects live until the next snapshot: keep the cyclic collector from
            # walking all of them on every full collection (pauses that showed up in p99)
            gc.collect()
            gc.freeze()
            self.synced.set()
        elif kind == "upsert":
            self._upsert(event.upsert)
        elif kind == "removed":
            self._remove((event.removed.namespace, event.removed.isvc, event.removed.revision))

    def _channel(self) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self.target)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.aio.secure_channel(self.target, self.tls.channel_credentials(), options)

    async def run(self) -> None:
        backoff = self.initial_backoff_s
        while True:
            try:
                async with self._channel() as channel:
                    stream = pb_grpc.DecisionServiceStub(channel).WatchDecisions(pb.WatchRequest(client="metrics-adapter"))
                    async for event in stream:
                        if not self.connected:
                            log.info("watching decisions from %s", self.target)
                            self.connected, backoff = True, self.initial_backoff_s
                        self.apply(event)
                    log.warning("decision stream from %s ended", self.target)
            except grpc.aio.AioRpcError as exc:
                log.warning("decision stream from %s failed: %s; serving the last values", self.target, exc.code().name)
            except OSError as exc:  # our certificate files unreadable (mid-rotation): try again later
                log.warning("decision stream: cannot read the client certificate: %s", exc)
            self.connected = False
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.max_backoff_s)
