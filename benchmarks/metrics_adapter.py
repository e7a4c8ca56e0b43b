"""External Metrics API latency and throughput, store mode against Prometheus mode.

Run: python benchmarks/metrics_adapter.py [--seconds 10] [--rate 2000]

Starts `inference-autoscaler metrics-adapter` as a real process pinned to one core, serving
10,000 series (2,000 ISVC decisions x 5 figures) over HTTPS. Requests come as the HPA sends
them, through the front proxy (client certificate + X-Remote-User, SubjectAccessReview cached),
each for `desired_replicas` of a random ISVC by label selector, over a pool of 16 keep-alive
connections (the kube-aggregator also proxies over a few long-lived connections). The load is
open-loop at a fixed rate (latency counted from each request's scheduled time, so queueing
shows) from this process on the other core, after 5 s of unmeasured warm-up at that rate that
opens the connections. Then the same adapter with --source prometheus, where each request is a
PromQL query to a real Prometheus server scraping the same 10,000 series. Prints p50/p99 and
achieved requests/s for each, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # we spawn the adapter while gRPC threads run

from autoscaler import aio  # noqa: E402
from autoscaler.decision_metrics import exposition  # noqa: E402
from autoscaler.decision_stream import DecisionHub, serve_decisions  # noqa: E402
from autoscaler.proto import decisions_pb2 as pb  # noqa: E402
from benchmarks.openloop import open_loop  # noqa: E402
from tests.certs import Authority  # noqa: E402
from tests.kube_api_emulator import Grant, KubeApiEmulator  # noqa: E402
from tests.prometheus_server import PrometheusServer, free_port  # noqa: E402

ISVCS = 2000  # x 5 figures = 10,000 series
HPA = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"


def decisions() -> list[pb.Decision]:
    now = time.time()
    return [
        pb.Decision(namespace=f"team-{i % 10}", isvc=f"isvc-{i}", model="llama-3-8b", accelerator="H100", service_class="Premium",
                    desired_replicas=1 + i % 17, arrival_rate=i / 7, cost_per_hour=4.0, decided_at=now + 3600)
        for i in range(ISVCS)
    ]  # fmt: skip


async def start(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


async def adapter(
    workdir: Path, kubeconfig: Path, cert: Path, key: Path, extra: list[str]
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "autoscaler", "metrics-adapter", "--secure-port", str(port), "--bind-address", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-private-key-file", str(key), "--kubeconfig", str(kubeconfig), *extra,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    os.sched_setaffinity(process.pid, {0})
    return process, port


WARM_UP_S = 5.0
CONNECTIONS = 16


async def load(
    url: str, context: ssl.SSLContext, rate: float, seconds: float, warm_until_ready: bool = True
) -> tuple[np.ndarray, float]:
    """Open-loop requests at `rate` for `seconds` after a warm-up; returns latencies (s) and achieved rate."""
    headers = {"X-Remote-User": HPA, "X-Remote-Group": "system:serviceaccounts"}
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=context)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        if warm_until_ready:
            for _ in range(400):
                try:
                    async with session.get(f"{url}/namespaces/team-1/desired_replicas?labelSelector=isvc%3Disvc-1") as r:
                        if r.status == 200 and (await r.json())["items"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)

        async def one() -> bool:
            i = random.randrange(ISVCS)
            try:
                async with session.get(f"{url}/namespaces/team-{i % 10}/desired_replicas?labelSelector=isvc%3Disvc-{i}") as r:
                    await r.read()
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        latencies, achieved, failures = await open_loop(one, rate, seconds, WARM_UP_S)
        if failures:
            print(f"  ({failures} requests failed)")
        return latencies, achieved


def report(label: str, latencies: np.ndarray, achieved: float, offered: float) -> tuple[float, float, float]:
    p50, p99 = np.percentile(latencies, 50) * 1000, np.percentile(latencies, 99) * 1000
    print(f"{label:<34} {offered:>8,.0f} {achieved:>9,.0f} {p50:>8.2f} {p99:>9.2f}")
    return p50, p99, achieved


async def main(seconds: float, rate: float, prometheus_rate: float) -> int:
    os.sched_setaffinity(0, {1})
    workdir = Path(tempfile.mkdtemp(prefix="adapter-bench-"))
    serving, front = Authority.create("serving-ca"), Authority.create("front-proxy-ca")
    cert, key = serving.issue("localhost", workdir, server=True)
    emulator = KubeApiEmulator(grants=[Grant(HPA)], configmap={"requestheader-client-ca-file": front.pem})
    api_runner, api_port = await start(emulator.app())
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(
        f"apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: b\n  cluster:\n    server: http://127.0.0.1:{api_port}\n"
        "users:\n- name: b\n  user:\n    token: t\ncontexts:\n- name: b\n  context:\n    cluster: b\n    user: b\n"
    )
    context = ssl.create_default_context(cadata=serving.pem)
    context.load_cert_chain(*front.issue("front-proxy-client", workdir))
    all_decisions = decisions()
    hub = DecisionHub()
    hub.publish(all_decisions)
    grpc_server = await serve_decisions(hub, "127.0.0.1:0")

    gc.freeze()  # the load generator's own collections must not show up as adapter latency
    print(f"10,000 series ({ISVCS} decisions x 5 figures); adapter pinned to CPU 0, load from CPU 1; {seconds:g} s per row")
    print(f"{'mode':<34} {'offered':>8} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>9}")

    async def measure(label: str, source_args: list[str]) -> tuple[tuple, tuple]:
        """(full rate, low rate) figures of one adapter mode."""
        process, port = await adapter(workdir, kubeconfig, cert, key, source_args)
        url = f"https://127.0.0.1:{port}/apis/external.metrics.k8s.io/v1beta1"
        try:
            full = report(label, *await load(url, context, rate, seconds), rate)
            low = report(label, *await load(url, context, prometheus_rate, seconds, False), prometheus_rate)
        finally:
            process.terminate()
            await process.wait()
        return full, low

    store_full, store_low = await measure("store (gRPC-fed)", ["--decisions", f"127.0.0.1:{grpc_server.bound_port}"])

    text = exposition(all_decisions).encode()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=text, content_type="text/plain")

    exporter_app = web.Application()
    exporter_app.router.add_get("/metrics", metrics)
    exporter, exporter_port = await start(exporter_app)
    prometheus = await asyncio.to_thread(
        PrometheusServer(workdir / "prometheus", exporter_port).start, "inference_autoscaler_desired_replicas", ISVCS
    )
    try:
        prom_full, prom_low = await measure(
            "prometheus (PromQL per request)", ["--source", "prometheus", "--prometheus-url", prometheus.url]
        )
    finally:
        prometheus.stop()
        await exporter.cleanup()
        await grpc_server.stop(None)
        await api_runner.cleanup()

    print()
    low_ratios = f"p50 {prom_low[0] / store_low[0]:.1f}x and p99 {prom_low[1] / store_low[1]:.1f}x"
    print(f"at {prometheus_rate:,.0f} req/s: {low_ratios} lower in store mode")
    print(f"at {rate:,.0f} req/s offered: store serves {store_full[2]:,.0f} req/s, prometheus mode {prom_full[2]:,.0f} req/s "
          f"({store_full[2] / prom_full[2]:.1f}x); p99 {store_full[1]:.2f} ms vs {prom_full[1]:,.0f} ms")  # fmt: skip
    verdict = "meets" if store_full[1] < 5.0 and store_full[2] >= 0.95 * rate else "MISSES"
    print(f"goal: p99 under 5 ms at {rate:,.0f} req/s on one core: {verdict} it (p99 {store_full[1]:.2f} ms)")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument(
        "--prometheus-rate", type=float, default=200.0, help="a rate Prometheus mode can sustain, for comparing latency"
    )
    args = parser.parse_args()
    sys.exit(aio.run(main(args.seconds, args.rate, args.prometheus_rate)))
