"""The controller's side of the decision stream: DecisionService.WatchDecisions over gRPC.

`DecisionHub.publish` replaces the current decisions after every control cycle; each watcher
gets a snapshot when it connects and then the changes. A watcher too slow to keep up is cut
off (it reconnects and starts again from a snapshot) rather than letting its queue grow.

The stream carries every namespace's traffic and cost, so it runs over mutual TLS: both ends
present a certificate signed by our CA (autoscaler/certificates.py), anything else fails the
handshake. Certificates are read again when their files change (a renewal needs no restart).
Only the leading controller serves it (`DecisionHub.leading`), and only once it has published
its first decisions (a snapshot before that would be empty and wipe the adapter's values): until
then the answer is UNAVAILABLE, and the adapter keeps its values and retries.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import grpc

from .decision_metrics import decision_problem
from .grpc_server import GrpcServer, serve
from .proto import decisions_pb2 as pb
from .proto import decisions_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
WATCHER_QUEUE_LIMIT = 10_000


def decision_key(decision: pb.Decision) -> tuple[str, str, str]:
    return (decision.namespace, decision.isvc, decision.revision)


class DecisionHub(pb_grpc.DecisionServiceServicer):
    def __init__(self):
        self._current: dict[tuple[str, str, str], pb.Decision] = {}
        self._watchers: set[asyncio.Queue] = set()
        self.leading = True  # a follower (see autoscaler/leader.py) serves no decisions
        self._published = False

    def step_down(self) -> None:
        """Stop serving: watchers are cut off and new ones refused until leading and published again."""
        self.leading = False
        self._published = False
        self._current = {}
        for queue in list(self._watchers):
            self._watchers.discard(queue)
            queue.put_nowait(None)

    def current(self) -> list[pb.Decision]:
        return list(self._current.values())

    def publish(self, decisions: Iterable[pb.Decision]) -> None:
        fresh = {}
        for decision in decisions:
            problem = decision_problem(decision)
            if problem:  # the planner checks what it decides; this keeps any slip off the wire
                log.error("decision for %s/%s not published: %s", decision.namespace, decision.isvc, problem)
                continue
            fresh[decision_key(decision)] = decision
        events = [pb.DecisionEvent(upsert=d) for d in fresh.values()]
        events += [
            pb.DecisionEvent(removed=pb.DecisionKey(namespace=k[0], isvc=k[1], revision=k[2]))
            for k in self._current.keys() - fresh.keys()
        ]
        self._current = fresh
        self._published = True
        for queue in list(self._watchers):
            if queue.qsize() + len(events) > WATCHER_QUEUE_LIMIT:
                self._watchers.discard(queue)
                queue.put_nowait(None)  # cut off: it will reconnect for a snapshot
                continue
            for event in events:
                queue.put_nowait(event)

    async def WatchDecisions(self, request: pb.WatchRequest, context) -> None:  # noqa: N802 - gRPC method name
        if not self.leading:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "this controller replica is not the leader")
        if not self._published:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no decisions yet: the first cycle has not finished")
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        log.info("decision watcher %r connected", request.client or context.peer())
        try:
            await context.write(pb.DecisionEvent(snapshot=pb.Snapshot(decisions=list(self._current.values()))))
            while (event := await queue.get()) is not None:
                await context.write(event)
        finally:
            self._watchers.discard(queue)


@dataclass(frozen=True)
class MutualTLS:
    """Our certificate and key, and the CA the peer's certificate must be signed by (PEM files)."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def _stamp(self) -> tuple:
        return tuple(os.stat(f).st_mtime_ns for f in (self.cert_file, self.key_file, self.ca_file))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key_file.read_bytes(), self.cert_file.read_bytes())], root_certificates=self.ca_file.read_bytes()
        )

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials that require a client certificate from the CA, re-read when the files change
        (gRPC asks the fetcher before each handshake; None keeps the current configuration)."""
        stamp = [self._stamp()]

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            try:
                now = self._stamp()
                if now == stamp[0]:
                    return None
                configuration = self._configuration()
            except OSError as exc:  # mid-rotation: keep serving with what was loaded
                log.warning("keeping the decision stream's certificate: %s", exc)
                return None
            stamp[0] = now
            log.info("reloaded the decision stream's certificate from %s", self.cert_file)
            return configuration

        return grpc.dynamic_ssl_server_credentials(self._configuration(), fetch, require_client_authentication=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """The client side, read now (a reconnecting client picks up a renewal)."""
        return grpc.ssl_channel_credentials(self.ca_file.read_bytes(), self.key_file.read_bytes(), self.cert_file.read_bytes())


async def serve_decisions(hub: DecisionHub, address: str, tls: MutualTLS | None = None) -> GrpcServer:
    """Start the DecisionService on `address` (host:port, port 0 for any); returns the server.
    Without `tls` it is plaintext: only for a loopback address (tests, a local run)."""
    return await serve(lambda server: pb_grpc.add_DecisionServiceServicer_to_server(hub, server), address, tls)
