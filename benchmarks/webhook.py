"""Admission webhook latency over HTTPS: 1,000 reviews/s, the webhook process on one core.

Run: python benchmarks/webhook.py [--rate 1000] [--seconds 10]

Starts `inference-autoscaler webhook` pinned to CPU 0 and sends real AdmissionReview v1 bodies
(half InferenceService creations that get defaulted, half revision pods that get gated) over 16
keep-alive HTTPS connections from CPU 1, open-loop, after a warm-up. Prints p50/p99 and the
achieved rate.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import ssl
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoscaler import aio  # noqa: E402
from benchmarks.openloop import open_loop  # noqa: E402
from tests.certs import Authority  # noqa: E402
from tests.prometheus_server import free_port  # noqa: E402
from tests.test_webhook import MANAGED, REVISION_POD, admission, isvc, pod  # noqa: E402

WARM_UP_S = 5.0
CONNECTIONS = 16


async def main(rate: float, seconds: float) -> int:
    os.sched_setaffinity(0, {1})
    workdir = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    authority = Authority.create("webhook-ca")
    cert, key = authority.issue("localhost", workdir, server=True)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", "webhook", "--port", str(port), "--bind-address", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-private-key-file", str(key), stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    os.sched_setaffinity(process.pid, {0})
    bodies = [json.dumps(admission(isvc(MANAGED))).encode(), json.dumps(admission(pod(*REVISION_POD), kind="Pod")).encode()]
    context = ssl.create_default_context(cadata=authority.pem)
    url = f"https://127.0.0.1:{port}/mutate"
    gc.freeze()
    try:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=context)
        async with aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"}) as session:
            for _ in range(200):
                try:
                    async with session.post(url, data=bodies[0]) as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)

            async def one() -> bool:
                try:
                    async with session.post(url, data=random.choice(bodies)) as response:
                        document = await response.json()
                        return response.status == 200 and document["response"]["allowed"]
                except aiohttp.ClientError:
                    return False

            latencies, achieved, failures = await open_loop(one, rate, seconds, WARM_UP_S)
    finally:
        process.terminate()
        await process.wait()
    p50, p99 = np.percentile(latencies, 50) * 1000, np.percentile(latencies, 99) * 1000
    print(f"AdmissionReviews over HTTPS, webhook pinned to CPU 0, load from CPU 1, {seconds:g} s after {WARM_UP_S:g} s warm-up")
    print(f"offered {rate:,.0f}/s, achieved {achieved:,.0f}/s, failures {failures}, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    verdict = "meets" if p99 < 5.0 and achieved >= 0.95 * rate and not failures else "MISSES"
    print(f"goal: p99 under 5 ms at {rate:,.0f} reviews/s on one core: {verdict} it")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    sys.exit(aio.run(main(args.rate, args.seconds)))
