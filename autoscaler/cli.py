"""The `inference-autoscaler` command. Bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path

from .errors import ApiError, InputError

EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE: a service it needs did not answer


def embedded_problem() -> Path:
    """Inferno's large 2026 sample (Apache-2.0), shipped so the optimizer runs with no cluster."""
    return Path(str(resources.files("autoscaler") / "data" / "inferno-large"))


def _optimize(args: argparse.Namespace) -> int:
    from .optimizer.loader import load_system
    from .optimizer.report import solution_json, solution_table
    from .optimizer.solver import solve

    system = load_system(args.problem or embedded_problem())
    solution = solve(system)
    print(solution_json(system, solution) if args.json else solution_table(system, solution))
    return 0


def _version() -> str:
    try:
        return metadata.version("inference-autoscaler")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


# subcommands served by other modules, each with add_arguments(parser) and run(args) -> exit code
SERVICES = {
    "controller": (
        "autoscaler.controller.server",
        "run the control loop against a Kubernetes cluster (KServe, Knative, Prometheus)",
        "Watch opted-in InferenceServices, read their vLLM load from Prometheus, decide GPU type, replicas "
        "and batch size, and apply them: ISVC annotations and status, HPAs, Knative PodAutoscalers, and the "
        "decision stream for the metrics adapter.",
    ),
    "simulate": (
        "autoscaler.simulator.command",
        "run the control loop against a simulated cluster beside Knative KPA, HPA and static provisioning",
        "Simulate vLLM-like servers, cold starts and limited GPUs under each autoscaling policy on the same "
        "traffic and compare SLO attainment and cost. Needs no cluster.",
    ),
    "evaluate": (
        "autoscaler.simulator.evaluate_command",
        "compare our autoscaler with every baseline's tuning frontier over a suite of workloads",
        "Run HPA, KPA and static provisioning over a grid of their tuning knob, a hindsight oracle and ours on "
        "each workload and cold start, and report where ours stands against each frontier of SLO attainment "
        "against GPU-hours. Needs no cluster.",
    ),
    "metrics-adapter": (
        "metrics_adapter.server",
        "serve the optimizer's decisions as external.metrics.k8s.io/v1beta1 for HPAs",
        "Aggregated API server (HTTPS) for external metrics, fed by the controller over gRPC or by Prometheus.",
    ),
    "webhook": (
        "webhook.server",
        "mutating admission webhook: default and validate InferenceServices, gate revision pods",
        "AdmissionReview v1 server over HTTPS for InferenceServices and the pods of their revisions.",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s service module is imported, to add its arguments.

    Every service is listed by name and help text, but importing one pulls in aiohttp, gRPC or
    kubernetes_asyncio (about half a second), which `optimize` and the other commands never use.
    """
    parser = argparse.ArgumentParser(
        prog="inference-autoscaler",
        description="Model-based autoscaling of LLM inference services on KServe/Knative.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    optimize = commands.add_parser(
        "optimize",
        help="choose GPU type, replicas and batch size for every server of a problem",
        description="Solve an Inferno-format problem: a directory of *-data.json files or one system-data.json.",
    )
    optimize.add_argument(
        "problem", nargs="?", type=Path, help="problem directory or system-data.json (default: embedded sample)"
    )
    optimize.add_argument("--json", action="store_true", help="print solution-data.json instead of a table")
    optimize.set_defaults(run=_optimize)
    for name, (module_name, help_text, description) in SERVICES.items():
        service = commands.add_parser(name, help=help_text, description=description)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(service)
            service.set_defaults(run=module.run)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line: the first word that is not an option (the
    top-level parser has no options taking a value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return args.run(args)
    except InputError as exc:
        print(f"inference-autoscaler: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ApiError as exc:  # a service could not start: the Kubernetes API refused or did not answer
        print(f"inference-autoscaler: error: Kubernetes API: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BrokenPipeError:  # `... | head` closed the pipe: not an error worth a traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
