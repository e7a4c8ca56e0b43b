"""`inference-autoscaler webhook` as a real process (uvloop, as deployed) under hostile load:
stalled sockets beyond its descriptor limit, and many large bodies at once."""

import asyncio
import resource
import sys
from pathlib import Path

import aiohttp

from .prometheus_server import free_port
from .test_https_limits import REVIEW
from .certs import Authority


class WebhookProcess:
    def __init__(self, tmp_path: Path, nofile: int | None = None):
        self.authority = Authority.create("webhook-ca")
        self.cert, self.key = self.authority.issue("localhost", tmp_path, server=True)
        self.port, self.nofile = free_port(), nofile
        self.url = f"https://127.0.0.1:{self.port}/mutate"

    def _limit(self) -> None:
        if self.nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    async def __aenter__(self):
        import ssl

        self.client = ssl.create_default_context(cadata=self.authority.pem)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "autoscaler", "webhook", "--port", str(self.port), "--bind-address", "127.0.0.1",
            "--tls-cert-file", str(self.cert), "--tls-private-key-file", str(self.key),
            stderr=asyncio.subprocess.PIPE, preexec_fn=self._limit,
        )  # fmt: skip
        for _ in range(400):
            try:
                if await self.review() == 200:
                    return self
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        raise AssertionError("webhook did not start")

    async def __aexit__(self, *_):
        self.process.terminate()
        _, self.stderr = await self.process.communicate()
        assert self.process.returncode == 0, self.stderr.decode()[-2000:]
        assert b"Traceback" not in self.stderr, self.stderr.decode()[-2000:]

    async def review(self, body: bytes = REVIEW) -> int:
        async with aiohttp.ClientSession() as session:
            async with session.post(self.url, data=body, ssl=self.client) as response:
                await response.read()
                return response.status

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


async def test_stalled_sockets_beyond_the_descriptor_limit_do_not_lock_out_reviews(tmp_path):
    async with WebhookProcess(tmp_path, nofile=256) as webhook:
        stalled = []
        for _ in range(300):  # TCP connections that never start TLS, as a slowloris would
            stalled.append(await asyncio.open_connection("127.0.0.1", webhook.port))
        assert [await webhook.review() for _ in range(20)] == [200] * 20
        for _, writer in stalled:
            writer.close()


async def test_forty_large_bodies_at_once_are_answered_in_bounded_memory(tmp_path):
    bomb = b"[" + b"{}," * (2_300_000) + b"{}]"  # 6.6 MiB: under the body limit, over the value limit
    async with WebhookProcess(tmp_path) as webhook:
        before = webhook.peak_rss_mib()
        statuses = await asyncio.gather(*(webhook.review(bomb) for _ in range(40)), return_exceptions=True)
        assert all(status in (400, 503) for status in statuses), statuses
        assert statuses.count(400) >= 2  # the slots took some; the rest were told to retry, not dropped
        assert await webhook.review() == 200
        assert webhook.peak_rss_mib() - before < 150  # ~730 MiB before the bounds
        too_big = await webhook.review(b" " * (8 * 1024 * 1024))
        assert too_big == 413
