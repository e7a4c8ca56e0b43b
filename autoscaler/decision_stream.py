"""The controller's side of the decision stream: DecisionService.WatchDecisions over gRPC.

`DecisionHub.publish` replaces the current decisions after every control cycle; each watcher
gets a snapshot when it connects and then the changes. A watcher too slow to keep up is cut
off (it reconnects and starts again from a snapshot) rather than letting its queue grow.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Iterable

import grpc

from .decision_metrics import decision_problem
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
        for queue in list(self._watchers):
            if queue.qsize() + len(events) > WATCHER_QUEUE_LIMIT:
                self._watchers.discard(queue)
                queue.put_nowait(None)  # cut off: it will reconnect for a snapshot
                continue
            for event in events:
                queue.put_nowait(event)

    async def WatchDecisions(self, request: pb.WatchRequest, context) -> None:  # noqa: N802 - gRPC method name
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.add(queue)
        log.info("decision watcher %r connected", request.client or context.peer())
        try:
            await context.write(pb.DecisionEvent(snapshot=pb.Snapshot(decisions=list(self._current.values()))))
            while (event := await queue.get()) is not None:
                await context.write(event)
        finally:
            self._watchers.discard(queue)


async def serve_decisions(hub: DecisionHub, address: str) -> grpc.aio.Server:
    """Start the DecisionService on `address` (host:port, port 0 for any); returns the server."""
    server = grpc.aio.server()
    pb_grpc.add_DecisionServiceServicer_to_server(hub, server)
    port = server.add_insecure_port(address)
    await server.start()
    server.bound_port = port  # type: ignore[attr-defined]
    return server
