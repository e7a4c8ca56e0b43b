"""Pure: replay published vLLM benchmark bursts through one simulated server and fit its overheads.

The published points (../shared/published-vllm/) are LambdaLabs' runs of vLLM's
`benchmark_serving.py` against Llama-3-8B-Instruct on one H100 in September 2024 (V0 engine,
`--max-model-len 2048 --gpu-memory-utilization 0.95 --max-num-seqs 1024`): N ShareGPT requests
sent at once, N = 10 ... 1280. We replay the same request sizes into one `VllmServer` with the
measured H100 profile and compare the client's statistics: TTFT and TPOT (mean, median, p99;
TPOT over requests with more than one output token, as the client computes it) and requests/s
(N over the time the last request finished).

The engine overheads (per step, per sequence in a step, per request in the front end) are the
only free parameters; `fit_overheads` finds them by one Levenberg-Marquardt least squares over
every statistic of every point (relative errors), the same values for all points.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .profiles import MODEL_SHAPES, MeasuredProfile, load_measured
from .server import EngineSettings, Ledger, Overheads, VllmServer, token_budget

STATISTICS = ("req/s", "ttft mean", "ttft p50", "ttft p99", "tpot mean", "tpot p50", "tpot p99")
PUBLISHED_MODEL = "llama-3-8b"
PUBLISHED_UTILIZATION = 0.95  # --gpu-memory-utilization of the published runs
PUBLISHED_MAX_NUM_SEQS = 1024
PUBLISHED_MAX_MODEL_LEN = 2048  # V0 without chunked prefill: token budget max(max_model_len, 2048)


@dataclass(frozen=True)
class Published:
    """The published runs: sizes of the 1280 requests and one row of statistics per burst size."""

    in_tokens: np.ndarray
    out_tokens: np.ndarray
    points: dict[int, np.ndarray]  # N -> values in STATISTICS order (ms, req/s)


def load_published(directory: Path) -> Published:
    lens = json.loads((directory / "lambda_sharegpt_lens.json").read_text())
    points = {}
    triple = r"\s*([\d.]+) / ([\d.]+) / ([\d.]+)\s*\|"  # mean / p50 / p99
    row = re.compile(r"^\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|" + triple + triple)
    for line in (directory / "README.md").read_text().splitlines():
        match = row.match(line)
        if match:
            points[int(match[1])] = np.array([float(v) for v in match.groups()[1:]])
    if not points:
        raise ValueError(f"{directory / 'README.md'}: no table of published points")
    return Published(np.array(lens["input_lens"]), np.array(lens["output_lens"]), points)


def published_profile() -> MeasuredProfile:
    profile = load_measured(PUBLISHED_MODEL)
    profile.kv_cache_tokens = MODEL_SHAPES[PUBLISHED_MODEL].kv_cache_tokens(PUBLISHED_UTILIZATION)
    return profile


def replay_burst(
    settings: EngineSettings, profile: MeasuredProfile, in_tokens: np.ndarray, out_tokens: np.ndarray, *, budget: int
) -> np.ndarray:
    """Send every request at time 0 to one server; the client's statistics in STATISTICS order."""
    n = len(in_tokens)
    finish = [math.nan] * n
    first = [math.nan] * n
    clock = [0.0]

    def finished(request: int, time: float) -> None:
        finish[request] = time

    def dropped(request: int) -> None:
        raise AssertionError(f"request {request} dropped in a burst replay")

    ledger = Ledger([0.0] * n, in_tokens.tolist(), out_tokens.tolist(), first, finished, dropped, math.inf)
    server = VllmServer(settings, profile, ledger, max_num_seqs=PUBLISHED_MAX_NUM_SEQS, budget=budget)
    for request in range(n):
        server.submit(request, 0.0)
    while server.next_event < math.inf:
        clock[0] = server.next_event
        server.wake(clock[0])
    finish_s, first_s = np.array(finish), np.array(first)
    ttft = first_s * 1000.0
    several = out_tokens > 1
    tpot = (finish_s - first_s)[several] / (out_tokens[several] - 1) * 1000.0
    return np.array(
        [
            n / finish_s.max(),
            ttft.mean(),
            np.median(ttft),
            np.percentile(ttft, 99),
            tpot.mean(),
            np.median(tpot),
            np.percentile(tpot, 99),
        ]
    )


def replay_all(published: Published, overheads: Overheads, mode: str = "v0-prefill-first") -> dict[int, np.ndarray]:
    settings = EngineSettings(mode=mode, overheads=overheads)
    profile = published_profile()
    budget = max(PUBLISHED_MAX_MODEL_LEN, 2048) if mode == "v0-prefill-first" else token_budget("H100")
    return {
        n: replay_burst(settings, profile, published.in_tokens[:n], published.out_tokens[:n], budget=budget)
        for n in sorted(published.points)
    }


def relative_errors(published: Published, simulated: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {n: simulated[n] / published.points[n] - 1.0 for n in simulated}


def fit_overheads(published: Published, start: Overheads | None = None, iterations: int = 12) -> Overheads:
    """Levenberg-Marquardt over (step_ms, seq_ms, request_ms, frontend_ms), kept >= 0: minimises the sum of
    squared relative errors of every statistic at every point. Jacobian by finite differences."""

    def residuals(x: np.ndarray) -> np.ndarray:
        errors = relative_errors(published, replay_all(published, Overheads(*x)))
        return np.concatenate([errors[n] for n in sorted(errors)])

    start = start or Overheads()
    x = np.array([start.step_ms, start.seq_ms, start.request_ms, start.frontend_ms], dtype=float)
    steps = np.array([0.1, 0.001, 0.1, 0.1])  # finite-difference steps, about 1% of plausible values
    r = residuals(x)
    damping = 1e-2
    for _ in range(iterations):
        jacobian = np.stack([(residuals(x + e) - r) / e[i] for i, e in enumerate(np.diag(steps))], axis=1)
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ r
        while True:
            candidate = np.maximum(x - np.linalg.solve(normal + damping * np.diag(np.diag(normal)), gradient), 0.0)
            trial = residuals(candidate)
            if trial @ trial < r @ r:
                x, r, damping = candidate, trial, damping / 3
                break
            damping *= 4
            if damping > 1e6:
                return Overheads(*x)
    return Overheads(*x)
