"""`inference-autoscaler webhook`: the AdmissionReview v1 endpoint over HTTPS.

A body that is not an AdmissionReview gets 400 with the reason. Any other failure still gets an
AdmissionReview: a Pod is allowed unchanged (never block workloads on our bug), an
InferenceService is refused with the error, so nothing unchecked slips through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping

from aiohttp import web

from autoscaler import aio
from autoscaler.errors import InputError
from autoscaler.https_server import HttpLimits, serve_https
from autoscaler.certificates import service_names
from autoscaler.kube import Kube
from autoscaler.tls import ReloadingTLS

from autoscaler.annotations import REPLICAS_BOUND, ClassDefaults
from .certificate_manager import CertificateManager, CertificateTarget
from .review import MalformedReview, parse, review

log = logging.getLogger(__name__)
# The API server accepts a request body of up to 3 MiB (MaxRequestBodyBytes in
# k8s.io/apiserver/pkg/server/config.go: twice etcd's 1.5 MiB, as JSON is larger than the stored
# protobuf); an UPDATE's review carries the object and the old object, so 2 x 3 MiB and 1 MiB
# for the envelope and the metadata the API server adds.
MAX_REVIEW_BYTES = 7 * 1024 * 1024
LIMITS = HttpLimits(max_body_bytes=MAX_REVIEW_BYTES)
DEFAULT_CLASSES = {"Premium": ClassDefaults(1, 10), "Bronze": ClassDefaults(1, 10), "Free": ClassDefaults(0, 5)}


def answer(body: bytes, classes: Mapping[str, ClassDefaults]) -> tuple[int, dict]:
    """HTTP status and JSON document for one request body; never raises."""
    try:
        request = parse(body)
    except MalformedReview as exc:
        return 400, {"error": f"malformed AdmissionReview: {exc}"}
    try:
        return 200, review(request, classes)
    except MalformedReview as exc:
        problem = f"malformed object: {exc}"
    except Exception as exc:  # noqa: BLE001 - a bug must still produce an answer, not a 500
        log.exception("review of %s failed", request.get("uid"))
        problem = f"internal error in the inference-autoscaler webhook: {exc!r}"
    is_pod = isinstance(request.get("kind"), dict) and request["kind"].get("kind") == "Pod"
    response = {"uid": request["uid"], "allowed": is_pod, "warnings": [problem]}
    if not is_pod:
        response["status"] = {"code": 422, "reason": "Invalid", "message": problem}
    return 200, {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def build_app(classes: Mapping[str, ClassDefaults], limits: HttpLimits = LIMITS) -> web.Application:
    # one thread: a large body is parsed beside the loop, never several at once (json holds the
    # GIL while it parses, so this bounds the stall and the memory rather than removing them)
    parser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="webhook-parse")

    async def mutate(request: web.Request) -> web.Response:
        body = await request.read()
        if len(body) > limits.large_body_bytes:
            status, document = await asyncio.get_running_loop().run_in_executor(parser, answer, body, classes)
        else:
            status, document = answer(body, classes)
        return web.Response(status=status, body=json.dumps(document).encode(), headers={"Content-Type": "application/json"})

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def stop_parser(_: web.Application) -> None:
        parser.shutdown(wait=False, cancel_futures=True)

    app = web.Application(client_max_size=limits.max_body_bytes)
    app.on_cleanup.append(stop_parser)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", health)
    return app


def load_classes(path: Path | None) -> dict[str, ClassDefaults]:
    """{"Premium": {"minReplicas": 1, "maxReplicas": 10}, ...}"""
    if path is None:
        return dict(DEFAULT_CLASSES)
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise InputError(str(path), f"line {exc.lineno} column {exc.colno}", f"malformed JSON: {exc.msg}") from None
    except ValueError as exc:  # a number past Python's 4,300-digit guard, or not UTF-8
        raise InputError(str(path), "", f"malformed JSON: {exc}") from None
    if not isinstance(document, dict) or not document:
        raise InputError(str(path), "", "expected an object of service classes")
    classes = {}
    for name, spec in document.items():
        bounds = spec if isinstance(spec, dict) else {}
        low, high = bounds.get("minReplicas", 1), bounds.get("maxReplicas", 10)
        whole = all(type(n) is int for n in (low, high))  # not bool, which is an int to Python
        if not (whole and 0 <= low <= high <= REPLICAS_BOUND and high >= 1):
            shown = repr(spec) if len(repr(spec)) < 200 else repr(spec)[:200] + "..."
            raise InputError(
                str(path), name, f"need whole minReplicas <= maxReplicas <= {REPLICAS_BOUND}, maxReplicas >= 1; got {shown}"
            )
        classes[name] = ClassDefaults(low, high)
    return classes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument("--tls-cert-file", type=Path, required=True)
    parser.add_argument("--tls-private-key-file", type=Path, required=True)
    parser.add_argument("--service-classes", type=Path, help="JSON of class -> {minReplicas, maxReplicas} (default: built in)")
    certificates = parser.add_argument_group("self-managed certificates (leave out with cert-manager)")
    certificates.add_argument(
        "--manage-certificates",
        metavar="NAMESPACE/SECRET",
        help="keep a CA and serving certificate in this Secret, written to the TLS files",
    )
    certificates.add_argument(
        "--services", default="", help="comma-separated Services the certificate covers (first: the webhook's)"
    )
    certificates.add_argument("--webhook-configuration", default="", help="MutatingWebhookConfiguration whose caBundle to keep")
    certificates.add_argument("--api-service", default="", help="APIService whose caBundle to keep (the metrics adapter's)")
    certificates.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account)")


async def _certificates(args: argparse.Namespace) -> tuple[CertificateManager, Kube] | None:
    """With --manage-certificates: the Secret made or renewed and the TLS files written before serving."""
    if not args.manage_certificates:
        return None
    namespace, _, secret = args.manage_certificates.partition("/")
    services = [s.strip() for s in args.services.split(",") if s.strip()]
    if not (namespace and secret and services):
        raise InputError("--manage-certificates", "", "expected NAMESPACE/SECRET and --services")
    names = tuple(name for service in services for name in service_names(service, namespace))
    kube = await Kube.connect(args.kubeconfig)
    target = CertificateTarget(namespace, secret, names, args.webhook_configuration, args.api_service)
    manager = CertificateManager(kube, target)
    try:
        (await manager.reconcile()).write(args.tls_cert_file, args.tls_private_key_file)
    except BaseException:
        await kube.close()
        raise
    return manager, kube


async def serve(args: argparse.Namespace) -> int:
    managed = await _certificates(args)
    try:
        classes = load_classes(args.service_classes)
        tls = ReloadingTLS(args.tls_cert_file, args.tls_private_key_file)
    except InputError:
        if managed:
            await managed[1].close()
        raise
    watcher = asyncio.create_task(tls.watch())
    renewer = asyncio.create_task(managed[0].run(args.tls_cert_file, args.tls_private_key_file)) if managed else None
    runner, _ = await serve_https(build_app(classes), args.bind_address, args.port, tls.front, LIMITS)
    log.info("admission webhook on https://%s:%d/mutate (classes: %s)", args.bind_address, args.port, ", ".join(sorted(classes)))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    watcher.cancel()
    if managed:
        renewer.cancel()
        await managed[1].close()
    await runner.cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return aio.run(serve(args))
