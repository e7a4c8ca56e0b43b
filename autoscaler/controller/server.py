"""`inference-autoscaler controller`: the control loop with its HTTP endpoints (POST /invoke for
one cycle now, /metrics, /healthz, /readyz), the gRPC DecisionService for the adapter, and gang
admission of new revisions' pod groups (whose reserved GPUs the optimizer leaves alone).

Security: /metrics and /invoke carry every namespace's traffic and cost, and /invoke changes
state, so both need a bearer token that a TokenReview accepts and a SubjectAccessReview allowing
the path and method as a non-resource URL (autoscaler/kube_auth.py) - the same delegated checks
as the metrics adapter, so Prometheus and operators are granted with ordinary RBAC
(`nonResourceURLs`). A network policy alone would let any pod of an allowed namespace in, and
is enforced only by some CNIs; loopback would keep Prometheus out. HTTPS serves with the
certificate the webhook manages; the decision stream runs over mutual TLS. Without certificate
files both listeners must be on loopback (a local run, tests). /invoke runs at most one cycle
per --invoke-min-interval (429 and Retry-After otherwise): every cycle is a control period to
the guards, so cycles on demand must not come faster than new load data.

High availability: replicas elect a leader on a Lease (autoscaler/leader.py); only the leader
runs cycles and gang admission and serves decisions, and only it is ready (so the Services route
to it). A replica that loses the Lease exits: a restarted one resumes from the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import socket
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from .. import aio
from ..decision_metrics import PROMETHEUS_PREFIX, exposition
from ..decision_stream import DecisionHub, MutualTLS, serve_decisions
from ..errors import ApiError, InputError
from ..kube_auth import KubernetesReviews, PathGate
from ..leader import ElectionSettings, LeaderElector
from ..tls import ReloadingTLS, is_loopback
from ..gang.admission import GangAdmission
from .catalog import node_gpu_types
from .collector import METRIC_NAME, CollectorSettings, PrometheusCollector
from .controller import Controller, ControllerSettings
from ..kserve import DEFAULT_MODE, MODES
from ..kube import Kube
from ..policy.planner import PlannerSettings

log = logging.getLogger(__name__)


def own_metrics(controller: Controller) -> str:
    report = controller.last_report
    lines = [
        f"# HELP {PROMETHEUS_PREFIX}cycles_total Control cycles run",
        f"# TYPE {PROMETHEUS_PREFIX}cycles_total counter",
        f"{PROMETHEUS_PREFIX}cycles_total {controller.cycles}",
        f"# HELP {PROMETHEUS_PREFIX}cycle_errors_total Cycles that could not collect, read data or finish",
        f"# TYPE {PROMETHEUS_PREFIX}cycle_errors_total counter",
        f"{PROMETHEUS_PREFIX}cycle_errors_total {controller.failed_cycles}",
        f"# HELP {PROMETHEUS_PREFIX}early_cycles_total Cycles run before the period because requests built up",
        f"# TYPE {PROMETHEUS_PREFIX}early_cycles_total counter",
        f"{PROMETHEUS_PREFIX}early_cycles_total {controller.early_cycles}",
    ]
    if report is not None:
        lines += [
            f"# HELP {PROMETHEUS_PREFIX}cycle_phase_seconds Duration of each phase of the last cycle",
            f"# TYPE {PROMETHEUS_PREFIX}cycle_phase_seconds gauge",
        ]
        lines += [
            f'{PROMETHEUS_PREFIX}cycle_phase_seconds{{phase="{phase}"}} {getattr(report, phase + "_s")!r}'
            for phase in ("collect", "optimize", "actuate")
        ]
        for name, value, help_text in (
            ("managed_services", report.services, "Managed ISVCs in the last cycle"),
            ("stale_decisions", report.stale, "ISVCs whose last decision was kept for lack of load data"),
            ("rejected_services", len(report.rejected), "ISVCs that opt in but cannot be managed (see the log)"),
            ("actuation_failures", len(report.failures), "Writes that failed in the last cycle after retries"),
        ):
            lines += [f"# HELP {PROMETHEUS_PREFIX}{name} {help_text}", f"# TYPE {PROMETHEUS_PREFIX}{name} gauge"]
            lines.append(f"{PROMETHEUS_PREFIX}{name} {value}")
    return "\n".join(lines) + "\n"


Authorize = Callable[[web.Request], Awaitable[web.Response | None]]


def build_app(controller: Controller, hub: DecisionHub, authorize: Authorize, invoke_min_interval_s: float) -> web.Application:
    async def invoke(request: web.Request) -> web.Response:
        if (denied := await authorize(request)) is not None:
            return denied
        if not hub.leading:
            return web.Response(status=503, text="this controller replica is not the leader\n")
        report = await controller.cycle(unless_within_s=invoke_min_interval_s)
        if report is None:  # too soon after the last cycle: nothing run, nothing changed
            last = controller.last_report
            wait_s = max(1, math.ceil(invoke_min_interval_s - (controller.clock() - last.started_at))) if last else 1
            body = {"error": f"the last cycle ran less than {invoke_min_interval_s:g} s ago; retry in {wait_s} s"}
            return web.json_response(body, status=429, headers={"Retry-After": str(wait_s)})
        return web.json_response(report.as_dict(), status=200 if not report.error else 503)

    async def metrics(request: web.Request) -> web.Response:
        if (denied := await authorize(request)) is not None:
            return denied
        body = own_metrics(controller) + exposition(hub.current())
        return web.Response(text=body, content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
        if not hub.leading:
            return web.Response(text="standing by: not the leader", status=503)
        ready = controller.last_report is not None and controller.data is not None
        return web.Response(text="ok" if ready else "no cycle yet", status=200 if ready else 503)

    app = web.Application()
    app.router.add_post("/invoke", invoke)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account, else ~/.kube/config)")
    parser.add_argument(
        "--namespace", default=os.environ.get("POD_NAMESPACE", "inference-autoscaler"), help="namespace of the data ConfigMap"
    )
    parser.add_argument(
        "--data-configmap", default="inference-autoscaler-data", help="ConfigMap with the optimizer's static data"
    )
    parser.add_argument(
        "--default-deployment-mode",
        choices=sorted(MODES),
        default=DEFAULT_MODE,
        help="KServe's deploy.defaultDeploymentMode in this cluster: the mode of an ISVC that names none",
    )
    parser.add_argument(
        "--provision-unfit-groups-after",
        type=float,
        metavar="SECONDS",
        help="with the Cluster Autoscaler (which ignores gated pods): ungate a pod group that has not fitted for this "
        "long, so that its Pending pods get nodes added; off by default (a group waits gated until it fits)",
    )
    parser.add_argument("--prometheus-url", default="http://prometheus-operated.monitoring:9090")
    parser.add_argument("--isvc-label", default="isvc", help="label holding the ISVC name on vLLM series")
    parser.add_argument(
        "--itl-metric",
        default=CollectorSettings.itl_metric,
        help="vLLM's histogram of every gap between a request's outputs; vLLM < 0.11: vllm:time_per_output_token_seconds",
    )
    parser.add_argument("--period", type=float, default=30.0, help="seconds between cycles")
    parser.add_argument("--window", type=int, default=60, help="seconds of history behind each rate")
    parser.add_argument(
        "--queue-probe", type=float, default=5.0, help="seconds between looks at the requests in the system between cycles"
    )
    parser.add_argument(
        "--scrape-interval",
        type=int,
        default=5,
        help="seconds between Prometheus's scrapes of vLLM (the PodMonitor's interval; 5 in config/samples): the "
        "intervals the arrivals' burstiness is counted over (their Allan factor, for the latency model); 0: not measured",
    )
    parser.add_argument("--startup-seconds", type=float, default=120.0, help="time from scale-up to a serving replica")
    parser.add_argument(
        "--load-aware-router",
        action="store_true",
        help="the ISVCs' requests reach their replicas through a router that balances by load (Knative's activator, "
        "Istio's LEAST_REQUEST, the Gateway API inference extension): a fleet is sized as pooling its queues, "
        "while it meets its goal; without it each replica is sized for a Poisson share (kube-proxy)",
    )
    parser.add_argument("--listen", default="0.0.0.0:8443", help="HTTPS address for /invoke, /metrics, /healthz")
    parser.add_argument("--decisions-address", default="0.0.0.0:9090", help="gRPC address of the DecisionService")
    parser.add_argument("--tls-cert-file", type=Path, help="serving certificate (PEM) for HTTPS and gRPC, reloaded on change")
    parser.add_argument("--tls-private-key-file", type=Path)
    parser.add_argument("--client-ca-file", type=Path, help="CA that signs the decision stream's clients (PEM)")
    parser.add_argument(
        "--invoke-min-interval", type=float, default=15.0, help="seconds after a cycle before /invoke runs another"
    )
    parser.add_argument("--lease-name", default="inference-autoscaler-controller", help="Lease for leader election")
    parser.add_argument("--lease-duration", type=float, default=15.0, help="seconds a follower waits on a silent leader")
    parser.add_argument("--renew-deadline", type=float, default=10.0, help="seconds the leader may fail to renew")
    parser.add_argument("--retry-period", type=float, default=2.0, help="seconds between election attempts")
    parser.add_argument("--no-hpa-tolerance", action="store_true", help="omit behavior tolerance (Kubernetes < 1.33 rejects it)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return aio.run(_serve(args))


def _transport(args: argparse.Namespace) -> tuple[ReloadingTLS | None, MutualTLS | None]:
    files = (args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)
    if not any(files):
        for flag, address in (("--listen", args.listen), ("--decisions-address", args.decisions_address)):
            if not is_loopback(address):
                need = "--tls-cert-file, --tls-private-key-file and --client-ca-file"
                raise InputError("command line", flag, f"plaintext only on loopback: give {need}")
        return None, None
    if not all(files):
        raise InputError("command line", "--tls-cert-file", "needs --tls-private-key-file and --client-ca-file too")
    for path in files:
        if not path.is_file():
            raise InputError(str(path), "", "file not found")
    try:
        https = ReloadingTLS(args.tls_cert_file, args.tls_private_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(str(args.tls_cert_file), "", f"cannot load the certificate: {exc}") from None
    return https, MutualTLS(args.tls_cert_file, args.tls_private_key_file, args.client_ca_file)


async def lead(elector: LeaderElector, hub: DecisionHub, workers: list[Callable[[], Awaitable]]) -> None:
    """Run `workers` while this replica holds the Lease; returns once it has lost it (they are
    stopped and the hub stops serving before the Lease can pass to another replica)."""
    await elector.acquire()
    hub.leading = True
    tasks = [asyncio.create_task(work()) for work in workers]
    try:
        await elector.keep()
    finally:
        for task in tasks:
            task.cancel()
        hub.step_down()
        await asyncio.gather(*tasks, return_exceptions=True)


def settings(args: argparse.Namespace) -> tuple[CollectorSettings, ControllerSettings]:
    """The collector's and the controller's settings the command line gives, checked (no I/O)."""
    from .actuator import ActuatorSettings

    for flag, value in (("--period", args.period), ("--queue-probe", args.queue_probe)):
        if not value > 0:
            raise InputError("command line", flag, "must be more than 0 seconds")
    if not args.startup_seconds >= 0:  # the planner's horizon, startup + period, must be positive
        raise InputError("command line", "--startup-seconds", "must be 0 or more seconds")
    if args.scrape_interval < 0:
        raise InputError("command line", "--scrape-interval", "must be 0 or more seconds")
    if not METRIC_NAME.fullmatch(args.itl_metric):  # it goes into every cycle's PromQL
        raise InputError("command line", "--itl-metric", f"is not a Prometheus metric name: {args.itl_metric!r:.80}")
    # the short window is the period (whole seconds, as a PromQL range)
    collected = CollectorSettings(
        window_s=args.window,
        recent_s=int(args.period) or None,
        dispersion_s=args.scrape_interval or None,
        isvc_label=args.isvc_label,
        itl_metric=args.itl_metric,
    )
    controlled = ControllerSettings(
        namespace=args.namespace,
        data_configmap=args.data_configmap,
        default_deployment_mode=MODES[args.default_deployment_mode],
        planner=PlannerSettings(period_s=args.period, startup_s=args.startup_seconds, load_aware_router=args.load_aware_router),
        actuator=ActuatorSettings(hpa_tolerance=not args.no_hpa_tolerance),
        probe_s=args.queue_probe,
    )
    return collected, controlled


async def _serve(args: argparse.Namespace) -> int:
    https, mutual = _transport(args)
    try:
        election = ElectionSettings(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as exc:
        raise InputError("command line", "--lease-duration", str(exc)) from None
    if not args.invoke_min_interval >= 0:
        raise InputError("command line", "--invoke-min-interval", "must be 0 or more seconds")
    collected, controlled = settings(args)
    kube = await Kube.connect(args.kubeconfig)
    try:  # an unreachable API server is said at once, not after the informers' sync timeout
        await kube.request("GET", "/version", timeout_s=10)
    except ApiError as exc:
        if exc.status == 0:
            await kube.close()
            raise
    collector = PrometheusCollector(args.prometheus_url, collected)
    hub = DecisionHub()
    hub.leading = False  # until elected
    controller = Controller(kube, collector, hub, controlled)
    nodes = controller.informers["nodes"]
    gangs = GangAdmission(
        kube,
        controller.informers["pods"],
        nodes,
        args.namespace,
        node_types=lambda: node_gpu_types(nodes.objects.values(), controller.data) if controller.data else {},
        pas=controller.informers["pas"],
        provision_after_s=args.provision_unfit_groups_after,
    )
    controller.reserved_gpus = gangs.reserved_gpus
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4()}"
    elector = LeaderElector(kube, args.namespace, args.lease_name, identity, election)
    gate = PathGate(KubernetesReviews(kube.api))
    grpc_server = runner = None
    tasks: list[asyncio.Task] = []
    try:  # whatever fails on the way up, everything started so far is stopped cleanly
        grpc_server = await serve_decisions(hub, args.decisions_address, mutual)
        await controller.start()  # followers keep warm caches too: a takeover starts at once
        runner = web.AppRunner(build_app(controller, hub, gate.authorize, args.invoke_min_interval))
        await runner.setup()
        host, _, port = args.listen.rpartition(":")
        await web.TCPSite(runner, host or "0.0.0.0", int(port), ssl_context=https.front if https else None).start()
        if https:
            tasks.append(asyncio.create_task(https.watch(), name="certificate reload"))
        scheme = "HTTPS" if https else "HTTP"
        log.info("controller up as %s: %s %s, decisions on gRPC port %d", identity, scheme, args.listen, grpc_server.bound_port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        leading = asyncio.create_task(lead(elector, hub, [controller.run, gangs.run]), name="leader election")
        tasks.append(leading)
        stopping = asyncio.create_task(stop.wait())
        tasks.append(stopping)
        await asyncio.wait([leading, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            failure = leading.exception()
            if failure is not None:  # a bug, not the Lease: say so, with its traceback
                log.error("leader election failed: exiting", exc_info=failure)
            else:
                log.error("lost the leader Lease: exiting so that a fresh replica resumes from the cluster")
            return 1
        leading.cancel()  # the workers stop before the Lease is handed over
        await asyncio.gather(leading, return_exceptions=True)
        await elector.release()  # a clean shutdown hands over at once
    finally:
        for task in tasks:
            task.cancel()
        await controller.stop()
        if grpc_server is not None:
            await grpc_server.stop(grace=2)
        if runner is not None:
            await runner.cleanup()
        await kube.close()
    return 0
