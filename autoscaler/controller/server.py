"""`inference-autoscaler controller`: the control loop with its HTTP endpoints (POST /invoke for
one cycle now, /metrics, /healthz, /readyz), the gRPC DecisionService for the adapter, and gang
admission of new revisions' pod groups (whose reserved GPUs the optimizer leaves alone)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from aiohttp import web

from .. import aio
from ..decision_metrics import PROMETHEUS_PREFIX, exposition
from ..decision_stream import DecisionHub, serve_decisions
from ..gang.admission import GangAdmission
from .catalog import node_gpu_types
from .collector import CollectorSettings, PrometheusCollector
from .controller import Controller, ControllerSettings
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


def build_app(controller: Controller, hub: DecisionHub) -> web.Application:
    async def invoke(_: web.Request) -> web.Response:
        report = await controller.cycle()
        return web.json_response(report.as_dict(), status=200 if not report.error else 503)

    async def metrics(_: web.Request) -> web.Response:
        body = own_metrics(controller) + exposition(hub.current())
        return web.Response(text=body, content_type="text/plain", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_: web.Request) -> web.Response:
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
    parser.add_argument("--prometheus-url", default="http://prometheus-operated.monitoring:9090")
    parser.add_argument("--isvc-label", default="isvc", help="label holding the ISVC name on vLLM series")
    parser.add_argument("--period", type=float, default=30.0, help="seconds between cycles")
    parser.add_argument("--window", type=int, default=60, help="seconds of history behind each rate")
    parser.add_argument("--startup-seconds", type=float, default=120.0, help="time from scale-up to a serving replica")
    parser.add_argument("--listen", default="0.0.0.0:8080", help="HTTP address for /invoke, /metrics, /healthz")
    parser.add_argument("--decisions-address", default="0.0.0.0:9090", help="gRPC address of the DecisionService")
    parser.add_argument("--no-hpa-tolerance", action="store_true", help="omit behavior tolerance (Kubernetes < 1.33 rejects it)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return aio.run(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from .actuator import ActuatorSettings

    kube = await Kube.connect(args.kubeconfig)
    collector = PrometheusCollector(args.prometheus_url, CollectorSettings(window_s=args.window, isvc_label=args.isvc_label))
    settings = ControllerSettings(
        namespace=args.namespace,
        data_configmap=args.data_configmap,
        planner=PlannerSettings(period_s=args.period, startup_s=args.startup_seconds),
        actuator=ActuatorSettings(hpa_tolerance=not args.no_hpa_tolerance),
    )
    hub = DecisionHub()
    controller = Controller(kube, collector, hub, settings)
    nodes = controller.informers["nodes"]
    gangs = GangAdmission(
        kube,
        controller.informers["pods"],
        nodes,
        args.namespace,
        node_types=lambda: node_gpu_types(nodes.objects.values(), controller.data) if controller.data else {},
    )
    controller.reserved_gpus = gangs.reserved_gpus
    grpc_server = runner = None
    tasks: list[asyncio.Task] = []
    try:  # whatever fails on the way up, everything started so far is stopped cleanly
        grpc_server = await serve_decisions(hub, args.decisions_address)
        await controller.start()
        tasks.append(asyncio.create_task(gangs.run(), name="gang admission"))
        runner = web.AppRunner(build_app(controller, hub))
        await runner.setup()
        host, _, port = args.listen.rpartition(":")
        await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
        log.info("controller ready: HTTP %s, decisions on gRPC port %d", args.listen, grpc_server.bound_port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        tasks.append(asyncio.create_task(controller.run(), name="control loop"))
        await stop.wait()
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
