"""Every phase of an HTTPS connection is bounded (autoscaler/https_server.py): stalled
handshakes, headers, bodies and idle keep-alive connections are dropped, oversized bodies are
refused, and when the connection cap is reached the oldest stalled peer makes room."""

import asyncio
import json
import ssl

import aiohttp
import pytest
from aiohttp import web

from autoscaler.https_server import HttpLimits, serve_https
from webhook.server import DEFAULT_CLASSES, build_app

from .certs import Authority
from .test_webhook import MANAGED, admission, isvc

REVIEW = json.dumps(admission(isvc(MANAGED))).encode()
QUICK = HttpLimits(handshake_timeout_s=0.5, header_timeout_s=0.5, body_timeout_s=0.5, idle_timeout_s=1.0, max_body_bytes=4096)


class Server:
    def __init__(self, tmp_path, limits: HttpLimits, app: web.Application | None = None):
        self.authority = Authority.create("limits-ca")
        cert, key = self.authority.issue("localhost", tmp_path, server=True)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert, key)
        self.client = ssl.create_default_context(cadata=self.authority.pem)
        self.limits, self.app = limits, app

    async def __aenter__(self):
        app = self.app or build_app(DEFAULT_CLASSES, self.limits)
        self.runner, self.site = await serve_https(app, "127.0.0.1", 0, self.context, self.limits)
        self.port = self.site.bound_port
        return self

    async def __aexit__(self, *_):
        await self.runner.cleanup()

    async def review(self) -> int:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://127.0.0.1:{self.port}/mutate", data=REVIEW, ssl=self.client) as response:
                await response.read()
                return response.status

    async def tls(self):
        return await asyncio.open_connection("127.0.0.1", self.port, ssl=self.client, server_hostname="localhost")


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent before closing the connection, failing if it stays open."""
    received = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def test_a_stalled_handshake_is_dropped(tmp_path):
    async with Server(tmp_path, QUICK) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # plain TCP, no ClientHello
        assert await closed_within(reader, 5) == b""
        writer.close()
        assert not server.site.connections


async def test_stalled_headers_are_dropped(tmp_path):
    async with Server(tmp_path, QUICK) as server:
        reader, writer = await server.tls()
        writer.write(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\n")
        await closed_within(reader, 5)
        writer.close()


async def test_a_stalled_body_gets_408(tmp_path):
    async with Server(tmp_path, QUICK) as server:
        reader, writer = await server.tls()
        writer.write(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n{")
        answer = await closed_within(reader, 5)
        assert answer.startswith(b"HTTP/1.1 408")
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(tmp_path):
    async with Server(tmp_path, QUICK) as server:
        reader, writer = await server.tls()
        request = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s" % (len(REVIEW), REVIEW)
        for _ in range(3):  # keep-alive works: three requests on one connection
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert head.startswith(b"HTTP/1.1 200") and json.loads(await reader.readexactly(length))["response"]["allowed"]
        assert await closed_within(reader, 5) == b""
        writer.close()


async def test_bodies_over_the_limit_are_413(tmp_path):
    async with Server(tmp_path, QUICK) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"https://127.0.0.1:{server.port}/mutate", data=b" " * 5000, ssl=server.client) as response:
                assert response.status == 413


async def test_stalled_peers_at_the_connection_cap_make_room_for_real_requests(tmp_path):
    limits = HttpLimits(max_connections=8, handshake_timeout_s=60, header_timeout_s=60)
    async with Server(tmp_path, limits) as server:
        stalled = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(20)]
        assert [await server.review() for _ in range(5)] == [200] * 5
        assert len(server.site.connections) <= 8
        for _, writer in stalled:
            writer.close()


async def test_all_busy_connections_are_kept_and_the_newcomer_closed(tmp_path):
    release = asyncio.Event()

    async def slow(_):
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    async with Server(tmp_path, HttpLimits(max_connections=2), app) as server:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            url = f"https://127.0.0.1:{server.port}/slow"
            busy = [asyncio.create_task(session.get(url, ssl=server.client)) for _ in range(2)]
            while sum(c.phase.value == "busy" for c in server.site.connections) < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(aiohttp.ClientError):
                await session.get(url, ssl=server.client)
            release.set()
            for task in busy:
                assert (await task).status == 200
