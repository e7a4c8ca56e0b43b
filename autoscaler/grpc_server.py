"""Our gRPC servers (the decision stream, KEDA's external scaler), stopped without a traceback.

grpc.aio's `Server.stop(grace)` returns once the core has cancelled the calls still open, but
before their handlers have taken the cancellation: a stream's handler task is still pending then
(grpcio 1.85, aio/server.pyx.pxi). Whoever closes the event loop next (asyncio.run at a process's
exit, a test's loop) cancels the task grpc keeps for the call, inside its `await` of the handler,
and grpc prints that CancelledError's traceback. `GrpcServer.stop` returns only once every
handler has ended, so the handlers' own clean-up (a watcher leaving the hub) has run too.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

import grpc

if TYPE_CHECKING:
    from .decision_stream import MutualTLS


class _Calls(grpc.aio.ServerInterceptor):
    """The task of every call in progress: grpc runs the interceptors in the call's own task,
    the one that then runs its handler."""

    def __init__(self):
        self.tasks: set[asyncio.Task] = set()

    async def intercept_service(self, continuation, handler_call_details):
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return await continuation(handler_call_details)


class GrpcServer:
    """A started grpc.aio server and the port it is bound to."""

    def __init__(self, server: grpc.aio.Server, calls: _Calls, bound_port: int):
        self._server, self._calls = server, calls
        self.bound_port = bound_port

    async def stop(self, grace: float | None) -> None:
        """Stop as grpc.aio does (calls still open after `grace` seconds are cancelled; None: at
        once), then wait for their handlers to end."""
        await self._server.stop(grace)
        if self._calls.tasks:
            await asyncio.wait(set(self._calls.tasks))


async def serve(add_servicer: Callable[[grpc.aio.Server], None], address: str, tls: MutualTLS | None) -> GrpcServer:
    """Start a server on `address` (host:port, port 0 for any) with what `add_servicer` adds.
    Without `tls` it is plaintext: only for a loopback address (tests, a local run)."""
    calls = _Calls()
    server = grpc.aio.server(interceptors=[calls])
    add_servicer(server)
    port = server.add_secure_port(address, tls.server_credentials()) if tls else server.add_insecure_port(address)
    await server.start()
    return GrpcServer(server, calls, port)
