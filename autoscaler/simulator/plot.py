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
