"""`inference-autoscaler metrics-adapter`: the aggregated API server process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from autoscaler import aio
from autoscaler.errors import InputError
from autoscaler.kube import ApiError, Kube

from .api import build_app
from .auth import Gatekeeper, KubernetesReviews, ReviewUnavailable
from autoscaler.decision_stream import MutualTLS
from autoscaler.https_server import HttpLimits, serve_https
from autoscaler.tls import ReloadingTLS, is_loopback

log = logging.getLogger(__name__)
# The front proxy's CA may be published after we start (a control plane being set up) or
# rotated; re-reading the ConfigMap every 30 s (one small GET) uses a new one within that time.
REQUESTHEADER_REFRESH_S = 30.0
# GETs only: no body is read, so the default 64 KiB bound is plenty
LIMITS = HttpLimits()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secure-port", type=int, default=6443)
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument("--tls-cert-file", type=Path, required=True, help="serving certificate (PEM), reloaded on change")
    parser.add_argument("--tls-private-key-file", type=Path, required=True)
    parser.add_argument(
        "--source", choices=("store", "prometheus"), default="store", help="decisions over gRPC, or PromQL per request"
    )
    parser.add_argument(
        "--decisions", default="inference-autoscaler-controller:9090", help="controller's DecisionService host:port"
    )
    parser.add_argument(
        "--decisions-ca-file",
        type=Path,
        help="CA of the controller's certificate: the stream then runs over mutual TLS with our serving pair as the "
        "client certificate (without it: plaintext, to a loopback address only)",
    )
    parser.add_argument(
        "--keda-address",
        default="",
        help="also serve KEDA's External Scaler gRPC service on host:port (for a cluster whose external metrics "
        "APIService is KEDA's; see the README); off when empty",
    )
    parser.add_argument(
        "--keda-client-ca-file",
        type=Path,
        help="CA of KEDA's client certificate (TriggerAuthentication tlsClientCert): the scaler then runs over "
        "mutual TLS with our serving pair (without it: plaintext, to a loopback address only)",
    )
    parser.add_argument("--prometheus-url", default="http://prometheus:9090")
    parser.add_argument("--stale-after", type=float, default=90.0, help="seconds after which values are labelled stale")
    parser.add_argument("--max-age", type=float, default=300.0, help="seconds after which values are no longer served")
    parser.add_argument("--kubeconfig", type=Path, help="outside a cluster: kubeconfig for the reviews (default: in-cluster)")


async def follow_requestheader(
    reviews: KubernetesReviews, gate: Gatekeeper, tls: ReloadingTLS, every_s: float = REQUESTHEADER_REFRESH_S
) -> None:
    """Re-read the request-header configuration; a new or changed CA applies to new handshakes."""
    while True:
        await asyncio.sleep(every_s)
        try:
            requestheader = await reviews.requestheader_config()
        except ReviewUnavailable as exc:
            log.warning("keeping the request-header configuration: %s", exc)
            continue
        if requestheader.client_ca_pem != gate.requestheader.client_ca_pem:
            log.info("request-header client CA %s", "changed" if gate.requestheader.client_ca_pem else "published")
        gate.requestheader = requestheader
        tls.set_client_ca(requestheader.client_ca_pem)


async def serve(args: argparse.Namespace) -> int:
    if args.keda_address and args.source != "store":
        raise InputError("command line", "--keda-address", "the KEDA scaler serves the decision stream's values: --source store")
    if args.keda_address and args.keda_client_ca_file is None and not is_loopback(args.keda_address):
        raise InputError("command line", "--keda-client-ca-file", "the KEDA scaler is plaintext only on a loopback address")
    if not 0 < args.stale_after <= args.max_age:
        raise InputError("command line", "--stale-after", "must be > 0 and at most --max-age")
    # local files first: a bad certificate is reported without waiting for the API server
    tls = ReloadingTLS(args.tls_cert_file, args.tls_private_key_file, ask_client_certificate=True)
    if args.source == "store" and args.decisions_ca_file is None and not is_loopback(args.decisions):
        raise InputError("command line", "--decisions-ca-file", "the decision stream is plaintext only to a loopback address")
    api_client = (await Kube.connect(str(args.kubeconfig) if args.kubeconfig else None)).api
    reviews = KubernetesReviews(api_client)
    try:
        requestheader = await reviews.requestheader_config()
    except ReviewUnavailable as exc:
        await api_client.close()
        raise ApiError(0, f"cannot read kube-system/extension-apiserver-authentication: {exc}") from None
    tls.set_client_ca(requestheader.client_ca_pem)
    gate = Gatekeeper(requestheader, reviews)
    tasks = [asyncio.create_task(tls.watch())]
    keda = None
    if args.source == "prometheus":
        from .prometheus_source import PrometheusSource

        source, ready = PrometheusSource(args.prometheus_url), (lambda: True)
    else:
        from .feed import DecisionFeed
        from .store import MetricStore

        source = MetricStore(args.stale_after, args.max_age)
        stream_tls = None
        if args.decisions_ca_file:
            stream_tls = MutualTLS(args.tls_cert_file, args.tls_private_key_file, args.decisions_ca_file)
        feed = DecisionFeed(args.decisions, source, tls=stream_tls)
        tasks.append(asyncio.create_task(feed.run()))
        ready = feed.ready
        if args.keda_address:
            from .keda import serve_keda

            keda_tls = None
            if args.keda_client_ca_file:
                keda_tls = MutualTLS(args.tls_cert_file, args.tls_private_key_file, args.keda_client_ca_file)
            keda = await serve_keda(source, args.keda_address, keda_tls)

    tasks.append(asyncio.create_task(follow_requestheader(reviews, gate, tls)))
    runner, _ = await serve_https(
        build_app(source, gate.authorize, ready), args.bind_address, args.secure_port, tls.front, LIMITS
    )
    log.info(
        "serving external.metrics.k8s.io/v1beta1 on https://%s:%d (source: %s)", args.bind_address, args.secure_port, args.source
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await runner.cleanup()
    if keda is not None:
        await keda.stop(grace=2)
    await api_client.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return aio.run(serve(args))
