"""`inference-autoscaler evaluate`: ours against every baseline's tuning frontier, per workload."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import InputError
from .command import MAX_DURATION_S, TABLE_WIDTH, check_jobs, positive
from .evaluate import (
    FAMILIES,
    FAMILY_LABELS,
    GOAL,
    TABLE_HEADER,
    as_document,
    evaluate,
    markdown_table,
    summary_counts,
    table_rows,
)
from .scenarios import DEFAULT_DURATION_S
from .workloads import SUITE, WORKLOADS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workloads", default=",".join(SUITE), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--cold-starts", default="60,120", help="comma-separated cold starts in seconds (default: 60,120)")
    parser.add_argument(
        "--duration", type=float, default=DEFAULT_DURATION_S, help="simulated seconds (default: 3600; a trace is its window)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="runs simulated in parallel processes (default: 1)")
    parser.add_argument("--plots", type=Path, help="write <workload>.png, attainment against GPU-hours, into this folder")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print every run and standing as JSON")
    output.add_argument("--markdown", action="store_true", help="print the frontier table as Markdown")


def _names(value: str, known: tuple[str, ...], flag: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise InputError("command line", flag, f"unknown {', '.join(unknown) or '(none)'} (choose from {', '.join(known)})")
    return list(dict.fromkeys(names))


def _cold_starts(value: str) -> list[float]:
    try:
        values = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise InputError("command line", "--cold-starts", f"expected numbers separated by commas, got {value!r}") from None
    if not values:
        raise InputError("command line", "--cold-starts", "no cold start given")
    return [positive(v, "--cold-starts") for v in dict.fromkeys(values)]


def run(args: argparse.Namespace) -> int:
    workloads = _names(args.workloads, WORKLOADS, "--workloads")
    cold_starts = _cold_starts(args.cold_starts)
    duration = positive(args.duration, "--duration", MAX_DURATION_S)
    jobs = check_jobs(args.jobs)
    if args.plots and not args.plots.is_dir():
        raise InputError("command line", "--plots", f"{str(args.plots)!r} is not a folder")
    started = time.perf_counter()
    results = evaluate(
        workloads, cold_starts, args.seed, duration, jobs, on_progress=lambda message: print(message, file=sys.stderr, flush=True)
    )
    wall = time.perf_counter() - started
    if args.plots:
        from .plot import save_frontier_plot

        for workload in workloads:
            save_frontier_plot([r for r in results if r.case.workload == workload], args.plots / f"{workload}.png")
    if args.json:
        print(json.dumps(as_document(results) | {"wall_seconds": round(wall, 1)}, indent=2, allow_nan=False))
        return 0
    if args.markdown:
        print(markdown_table(results))
    else:
        _print_table(results)
    print()
    for family, (beaten, ahead) in summary_counts(results).items():
        print(
            f"{FAMILY_LABELS[family]}'s frontier beats ours in {beaten} of {len(results)} cases; ours beats it in {ahead}"
            + (";" if family != FAMILIES[-1] else ".")
        )
    print(f"{len(results)} cases, oracle sized for {100 * GOAL:.0f}% per ISVC; {wall:.0f} s with {jobs} process(es)")
    return 0


def _print_table(results) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=TABLE_WIDTH)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1), collapse_padding=True)
    for i, column in enumerate(TABLE_HEADER):
        table.add_column(column, justify="left" if i < 2 else "right", overflow="fold")
    for row in table_rows(results):
        table.add_row(*row)
    console.print(table)
