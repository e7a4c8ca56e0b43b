"""`inference-autoscaler simulate`: every policy on the same simulated cluster and traffic."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path

from ..errors import InputError
from .report import ALL_CLASSES, TABLE_HEADER, as_json, outcomes, table_rows
from .runner import POLICIES, RunSettings, run_all
from .scenarios import DEFAULT_DURATION_S, SCENARIOS, build_scenario
from .server import MODES, EngineSettings
from .traffic import read_azure_trace, read_simple_trace, replayed
from .world import Scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=SCENARIOS, default="mixed", help="built-in traffic (default: mixed)")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="simulated seconds (default: 3600)")
    parser.add_argument("--cold-start", type=float, default=60.0, help="seconds from GPU assignment to serving (default: 60)")
    parser.add_argument("--period", type=float, default=30.0, help="our control period in seconds (default: 30)")
    parser.add_argument("--seed", type=int, help="seed of the built-in traffic (default: 1); a --trace replay is the trace's own")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated subset of {','.join(POLICIES)}")
    parser.add_argument(
        "--trace", type=Path, help="replay a CSV: Azure (TIMESTAMP,ContextTokens,GeneratedTokens) or time,model,in,out"
    )
    parser.add_argument("--trace-isvc", default="chat-8b", help="ISVC that serves an Azure trace (default: chat-8b)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", type=Path, help="write a PNG of GPUs, p95 TTFT and SLO attainment over time")
    parser.add_argument("--jobs", type=int, default=1, help="policies simulated in parallel processes (default: 1)")
    parser.add_argument(
        "--server",
        choices=MODES,
        default=EngineSettings.mode,
        help="how replicas run vLLM: V1 chunked prefill (default), V0 prefill-first, or the earlier stall model",
    )


MAX_DURATION_S = 7 * 24 * 3600.0  # a week of traffic is tens of millions of requests


def positive(value: float, flag: str, most: float = math.inf) -> float:
    if not 0 < value < math.inf:
        raise InputError("command line", flag, f"must be a finite number > 0, got {value:g}")
    if value > most:
        raise InputError("command line", flag, f"must be at most {most:g}, got {value:g}")
    return value


def check_jobs(value: int) -> int:
    if value < 1:
        raise InputError("command line", "--jobs", f"must be >= 1, got {value}")
    return value


def writable_plot_path(path: Path | None) -> Path | None:
    """Refuse a plot path that cannot be written before simulating, so no run is lost to it."""
    if path is None:
        return None
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        raise InputError("command line", "--plot", f"cannot write {str(path)!r}: not a file in a writable folder")
    return path


def _with_trace(scenario: Scenario, path: Path, isvc_name: str, duration: float) -> Scenario:
    names = [spec.name for spec in scenario.world.isvcs]
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            header = handle.readline().strip()
    except OSError as exc:
        raise InputError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    if header.startswith("TIMESTAMP"):
        if isvc_name not in names:
            raise InputError("command line", "--trace-isvc", f"unknown ISVC {isvc_name!r} (one of {', '.join(names)})")
        requests = replayed(read_azure_trace(path), names.index(isvc_name), duration)
    else:
        by_model = {spec.model: i for i, spec in enumerate(scenario.world.isvcs)} | {n: i for i, n in enumerate(names)}
        requests = read_simple_trace(path, by_model.get)
        requests = requests.where(requests.time < duration)
    if len(requests) == 0:
        raise InputError(str(path), "", f"no request within the first {duration:g} s")
    span = min(duration, float(requests.time[-1]) + 1.0)
    return dataclasses.replace(scenario, name=f"trace {path.name}", requests=requests, duration_s=span)


def run(args: argparse.Namespace) -> int:
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise InputError(
            "command line", "--policies", f"unknown policy {', '.join(unknown) or '(none)'} (choose from {', '.join(POLICIES)})"
        )
    duration = positive(args.duration, "--duration", MAX_DURATION_S)
    plot = writable_plot_path(args.plot)
    settings = RunSettings(control_period_s=positive(args.period, "--period"), jobs=check_jobs(args.jobs))
    cold_start = positive(args.cold_start, "--cold-start")
    scenario = build_scenario(args.scenario, 1 if args.seed is None else args.seed, duration, cold_start)
    scenario = dataclasses.replace(scenario, world=dataclasses.replace(scenario.world, engine=EngineSettings(args.server)))
    if args.trace:
        scenario = _with_trace(scenario, args.trace, args.trace_isvc, duration)
        if args.seed is not None:
            print(
                "inference-autoscaler: note: --seed does not change a --trace replay: its arrivals and sizes are the trace's own",
                file=sys.stderr,
            )

    started = time.perf_counter()
    results = _run_with_progress(scenario, policies, settings, show=not args.json)
    wall = time.perf_counter() - started
    rows = outcomes(scenario, results)
    plot_error = None
    if plot:
        from .plot import save_plot

        try:
            save_plot(scenario, results, plot)
        except OSError as exc:  # the folder went away during the run: the results still print
            plot_error = InputError("command line", "--plot", f"cannot write {str(plot)!r}: {exc.strerror or exc}")
            plot = None
    if args.json:
        print(as_json(scenario, rows, wall))
    else:
        _print_table(scenario, rows, wall, plot)
    if plot_error:
        raise plot_error
    return 0


def _run_with_progress(scenario: Scenario, policies, settings: RunSettings, show: bool):
    if not show:
        return run_all(scenario, policies, settings)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description:<12}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        tasks = {name: progress.add_task(name, total=scenario.duration_s) for name in policies}
        return run_all(scenario, policies, settings, on_progress=lambda name, t: progress.update(tasks[name], completed=t))


TABLE_WIDTH = 100  # what a pipe or file gets; a terminal gets its own width


def _print_table(scenario: Scenario, rows, wall: float, plot: Path | None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=TABLE_WIDTH)
    table = Table(
        title=f"{scenario.name}: {len(scenario.requests):,} requests over {scenario.duration_s / 60:g} min, "
        f"cold start {scenario.world.cold_start_s:g} s",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for i, column in enumerate(TABLE_HEADER):
        table.add_column(column, justify="left" if i < 2 else "right", no_wrap=True)
    previous = None
    for row, outcome in zip(table_rows(rows), rows, strict=True):
        if previous is not None and outcome.policy != previous:
            table.add_section()
        previous = outcome.policy
        table.add_row(*row, style="bold" if outcome.service_class == ALL_CLASSES else None)
    console.print(table)
    console.print(
        "SLO met = requests within both their class's TTFT and ITL SLO (dropped count as missed); "
        "met/GPU-h = SLO-met requests per GPU-hour."
    )
    console.print(f"simulated {len(scenario.requests) * len({r.policy for r in rows}):,} requests in {wall:.1f} s")
    if plot:
        console.print(f"plot written to {plot}")
    sys.stdout.flush()
