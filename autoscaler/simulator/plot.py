"""PNG of a comparison: GPUs held, p95 TTFT and SLO attainment per minute, one line per policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine import SimulationResult
from .report import request_latencies, slo_met
from .world import Scenario

MINUTE = 60.0


def _per_minute(scenario: Scenario, values: np.ndarray, reducer) -> tuple[np.ndarray, np.ndarray]:
    minute = (scenario.requests.time // MINUTE).astype(int)
    xs, ys = [], []
    for m in range(int(np.ceil(scenario.duration_s / MINUTE))):
        picked = values[minute == m]
        picked = picked[np.isfinite(picked)]
        if picked.size:
            xs.append(m + 0.5)
            ys.append(reducer(picked))
    return np.array(xs), np.array(ys)


def save_plot(scenario: Scenario, results: list[SimulationResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (gpus, ttft_axis, slo_axis) = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    for result in results:
        gpus.step(result.series_time / MINUTE, result.series_replicas.sum(axis=1), where="post", label=result.policy)
        ttft, _ = request_latencies(scenario, result)
        ttft = np.where(result.dropped, np.inf, ttft)
        x, y = _per_minute(scenario, np.where(np.isinf(ttft), 1e6, ttft), lambda v: np.percentile(v, 95))
        ttft_axis.plot(x, y, label=result.policy)
        met = slo_met(scenario, result).astype(float)
        x, y = _per_minute(scenario, met, np.mean)
        slo_axis.plot(x, 100 * y, label=result.policy)
    gpus.set_ylabel("GPUs held")
    ttft_axis.set_ylabel("p95 TTFT per minute (ms)")
    ttft_axis.set_yscale("log")
    slo_axis.set_ylabel("requests meeting SLOs (%)")
    slo_axis.set_xlabel("minute")
    slo_axis.set_ylim(0, 101)
    gpus.legend(loc="upper left", ncol=len(results))
    gpus.set_title(f"scenario {scenario.name}: {len(scenario.requests):,} requests, cold start {scenario.world.cold_start_s:g} s")
    for axis in (gpus, ttft_axis, slo_axis):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FAMILY_STYLES = {"hpa": ("tab:green", "o"), "knative-kpa": ("tab:orange", "s"), "static-peak": ("tab:red", "^")}


def save_frontier_plot(results, path: Path) -> None:
    """One workload: SLO attainment against GPU-hours, a panel per cold start, each baseline's
    runs over its tuning grid with its frontier, the hindsight oracle and ours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .evaluate import GOAL
    from .pareto import frontier

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2), squeeze=False)
    for axis, result in zip(axes[0], results, strict=True):
        for family, runs in result.families.items():
            color, marker = FAMILY_STYLES[family]
            points = [run.point for run in runs]
            axis.scatter(
                [p.gpu_hours for p in points], [100 * p.attainment for p in points], color=color, marker=marker, alpha=0.35, s=22
            )
            front = frontier(points)
            axis.plot([p.gpu_hours for p in front], [100 * p.attainment for p in front], color=color, marker=marker, label=family)
        if result.oracle:
            axis.scatter(
                [result.oracle.gpu_hours],
                [100 * result.oracle.attainment],
                color="black",
                marker="D",
                s=40,
                label="oracle (static, hindsight)",
            )
        axis.scatter(
            [result.ours.gpu_hours], [100 * result.ours.attainment], color="tab:blue", marker="*", s=160, zorder=5, label="ours"
        )
        axis.axhline(100 * GOAL, color="grey", linestyle=":", linewidth=1)
        axis.set_title(f"{result.case.workload}, cold start {result.case.cold_start_s:g} s")
        axis.set_xlabel("GPU-hours")
        axis.set_ylabel("requests meeting SLOs (%)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
