"""HTTPS for our aiohttp servers with every phase of a connection bounded in time and number.

aiohttp alone waits for a TLS handshake up to 60 s, for request headers and for a keep-alive
request up to its keep-alive timeout (3,630 s), and for a body without end; every stalled peer
holds a file descriptor, so a few hundred of them exhaust a 256-descriptor limit and real
requests fail. Here we accept each socket ourselves, one at a time, as a `_Connection` that
shakes hands (`loop.connect_accepted_socket`) and feeds the decrypted bytes to aiohttp's own
request handler, so one timer covers every phase: handshake, request headers, body, keep-alive
idle. When `max_connections`
are open, a new one evicts the oldest connection that is not running a request (a peer still in
its handshake or headers first, an idle keep-alive one next), so stalled peers cannot lock out
the API server; only when all are busy is the newcomer closed.

The numbers (`HttpLimits`) and why:
- handshake 10 s: the API server's own client gives up after 10 s (Go's TLSHandshakeTimeout).
- headers and body 10 s each: our callers send a whole request at once; the API server's
  webhook timeout is at most 30 s and ours is 5 s (config/webhook).
- idle keep-alive 120 s: longer than the API server's 90 s IdleConnTimeout (Go's default,
  applied by k8s.io/apimachinery's SetTransportDefaults), so the client always closes an idle
  connection first and never sends a request on one we are closing (Go does not resend a POST
  that was written to a connection the server closed); well under aiohttp's hour.
- connections: 1,000, less 64 under a lower RLIMIT_NOFILE (descriptors for logs, certificates,
  the Kubernetes client and the loop itself).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
import socket
import ssl
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_runner import BaseSite

from .errors import InputError

log = logging.getLogger(__name__)
FD_HEADROOM = 64


@dataclass(frozen=True)
class HttpLimits:
    handshake_timeout_s: float = 10.0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0
    max_connections: int = 1000
    # request line and each header at most 8 KiB, at most 100 headers (aiohttp answers 400 past
    # them): a review or an aggregator request carries a dozen short headers
    max_line_bytes: int = 8190
    max_headers: int = 100
    max_body_bytes: int = 64 * 1024
    # bodies above this wait for one of `large_body_slots` before they are read, so memory holds
    # at most that many large bodies (and their parses) however many arrive together
    large_body_bytes: int = 256 * 1024
    large_body_slots: int = 2

    def connection_cap(self) -> int:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return self.max_connections
        return max(1, min(self.max_connections, soft - FD_HEADROOM))


class _Phase(enum.Enum):
    HANDSHAKE = "handshake"
    HEADERS = "headers"  # waiting for (the rest of) a request's headers
    BUSY = "busy"  # a request is being read or answered
    IDLE = "idle"  # keep-alive between requests


class _Connection(asyncio.Protocol):
    """One accepted socket: its TLS handshake, then aiohttp's handler fed through us so that the
    phase timers see every byte."""

    def __init__(self, site: "GuardedSite"):
        self.site = site
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Task | None = None
        self.handler = None
        self.phase = _Phase.HANDSHAKE
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    async def open(self, sock: socket.socket) -> None:
        """Shake hands on `sock` (a newly accepted socket), within the handshake timeout."""
        limits, loop = self.site.limits, asyncio.get_running_loop()
        self.handshake = asyncio.current_task()
        self._arm(limits.handshake_timeout_s)
        try:
            await loop.connect_accepted_socket(
                lambda: self, sock, ssl=self.site.ssl_context, ssl_handshake_timeout=limits.handshake_timeout_s
            )
        except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.CancelledError):
            self._forget()  # the loop closed the socket; the peer's problem, not worth a log line

    # --- the decrypted stream ---
    def connection_made(self, transport) -> None:
        self.transport = transport
        if self._closed:  # evicted or timed out while the handshake finished
            transport.abort()
            return
        self.handler = self.site.handler_factory()
        self.site.by_handler[self.handler] = self
        self.phase = _Phase.HEADERS
        self._arm(self.site.limits.header_timeout_s)
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.phase is _Phase.IDLE:  # the first bytes of the next request: headers due soon
            self.phase = _Phase.HEADERS
            self._arm(self.site.limits.header_timeout_s)
        if self.handler is not None:
            self.handler.data_received(data)

    def eof_received(self):
        return self.handler.eof_received() if self.handler is not None else None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc) -> None:
        self._forget()
        if self.handler is not None:
            self.handler.connection_lost(exc)

    # --- phases, driven by the guard's middleware ---
    def request_started(self) -> None:
        self.phase = _Phase.BUSY
        self._arm(None)

    def request_finished(self) -> None:
        if not self._closed:
            self.phase = _Phase.IDLE
            self._arm(self.site.limits.idle_timeout_s)

    def _arm(self, seconds: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if seconds is None else asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        log.debug("closing a connection that overstayed its %s phase", self.phase.value)
        self.abort()

    def abort(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.abort()
        elif self.handshake is not None:
            self.handshake.cancel()  # the loop then closes the socket

    def _forget(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._arm(None)
        self.site.connections.pop(self, None)
        if self.handler is not None:
            self.site.by_handler.pop(self.handler, None)


class _RequestLog(logging.LoggerAdapter):
    """aiohttp's server log, less the traceback of a request it could not parse (a line or
    headers past the limits, a malformed message): that is the peer's bad input, answered 400
    and said here in one line. Anything else (a handler's bug, a 500) keeps its traceback."""

    def exception(self, msg, *args, exc_info=True, **kwargs):
        if isinstance(exc_info, HttpProcessingError):
            self.warning(f"{msg}: %s", *args, exc_info.message, **kwargs)
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


REQUEST_LOG = _RequestLog(logging.getLogger("aiohttp.server"))


class Guard:
    """The limits of one app's connections: its middleware marks requests on their connection
    and reads bodies within the limits (413 past the size, 408 past the time, 503 when no
    large-body slot frees in time)."""

    def __init__(self, limits: HttpLimits):
        self.limits = limits
        self.by_handler: dict[object, _Connection] = {}  # aiohttp's RequestHandler -> ours
        self._slots = asyncio.Semaphore(limits.large_body_slots)

    def runner(self, app: web.Application) -> web.AppRunner:
        """A runner for `app` under these limits (aiohttp's keep-alive timer agrees with ours)."""
        app.middlewares.append(self._middleware)
        limits = self.limits
        return web.AppRunner(
            app,
            access_log=None,
            logger=REQUEST_LOG,
            keepalive_timeout=limits.idle_timeout_s,
            max_line_size=limits.max_line_bytes,
            max_field_size=limits.max_line_bytes,
            max_headers=limits.max_headers,
        )

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        connection = self.by_handler.get(request.protocol)
        if connection is not None:
            connection.request_started()
        try:
            return await self._bounded(request, handler)
        finally:
            if connection is not None:
                connection.request_finished()

    async def _bounded(self, request: web.Request, handler) -> web.StreamResponse:
        limits = self.limits
        if not request.body_exists:
            return await handler(request)
        length = request.content_length
        if length is not None and length > limits.max_body_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=limits.max_body_bytes, actual_size=length)
        if length is not None and length <= limits.large_body_bytes:
            return await self._read_then(request, handler)
        try:
            await asyncio.wait_for(self._slots.acquire(), limits.body_timeout_s)
        except asyncio.TimeoutError:
            return web.Response(status=503, text="too many large requests at once; retry", headers={"Retry-After": "1"})
        try:
            return await self._read_then(request, handler)
        finally:
            self._slots.release()

    async def _read_then(self, request: web.Request, handler) -> web.StreamResponse:
        if not request.content.is_eof():  # usually the whole body came with the headers
            try:
                async with asyncio.timeout(self.limits.body_timeout_s):
                    await request.read()
            except TimeoutError:
                return web.Response(status=408, text="request body not received in time", headers={"Connection": "close"})
        return await handler(request)


class GuardedSite(BaseSite):
    """An aiohttp site serving TLS on (host, port) for a runner made by `guard.runner(app)`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, ssl_context: ssl.SSLContext, guard: Guard):
        super().__init__(runner, ssl_context=ssl_context, backlog=128)
        self.host, self.port, self.guard, self.limits = host, port, guard, guard.limits
        self.by_handler = guard.by_handler
        self.connections: dict[_Connection, None] = {}  # insertion order: oldest first
        self.tasks: set[asyncio.Task] = set()
        self.cap = guard.limits.connection_cap()

    @property
    def name(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def bound_port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def ssl_context(self) -> ssl.SSLContext:
        return self._ssl_context

    def handler_factory(self):
        return self._runner.server()

    async def start(self) -> None:
        await super().start()
        try:
            self._listener = socket.create_server((self.host, self.port), backlog=self._backlog)
        except OSError as exc:  # port taken, address not ours: the command line's problem
            raise InputError(f"{self.host}:{self.port}", "", f"cannot listen: {exc.strerror or exc}") from None
        self._listener.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        """Accept one socket at a time, so the cap is applied before the next descriptor is taken."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._listener)
            except OSError as exc:  # EMFILE and the like: make room, then wait a little
                log.warning("cannot accept a connection: %s", exc)
                self._evict()
                await asyncio.sleep(0.05)
                continue
            connection = _Connection(self)
            if not self.admit(connection):
                sock.close()
                continue
            self.tasks.add(task := loop.create_task(connection.open(sock)))
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        self._accepting.cancel()
        self._listener.close()
        for connection in [c for c in self.connections if c.handler is None]:
            connection.abort()  # still in the handshake: aiohttp does not know them
        await super().stop()

    def _evict(self) -> bool:
        """Close the oldest connection not running a request: a stalled handshake or headers
        first, an idle keep-alive one next; False if all are busy."""
        victim = next((c for c in self.connections if c.phase in (_Phase.HANDSHAKE, _Phase.HEADERS)), None)
        victim = victim or next((c for c in self.connections if c.phase is _Phase.IDLE), None)
        if victim is None:
            return False
        victim.abort()
        return True

    def admit(self, connection: _Connection) -> bool:
        if len(self.connections) >= self.cap and not self._evict():
            return False
        self.connections[connection] = None
        return True


async def serve_https(app: web.Application, host: str, port: int, ssl_context: ssl.SSLContext, limits: HttpLimits):
    """Start `app` on (host, port) under `limits`; returns (runner, site): `runner.cleanup()` stops it."""
    guard = Guard(limits)
    runner = guard.runner(app)
    await runner.setup()
    site = GuardedSite(runner, host, port, ssl_context, guard)
    await site.start()
    return runner, site
