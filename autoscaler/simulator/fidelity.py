"""Pure: replay published vLLM benchmark bursts through one simulated server and fit its overheads.

The published points (../shared/published-vllm/) are LambdaLabs' runs of vLLM's
`benchmark_serving.py` against Llama-3-8B-Instruct on one H100 in September 2024 (V0 engine,
`--max-model-len 2048 --gpu-memory-utilization 0.95 --max-num-seqs 1024`): N ShareGPT requests
sent at once, N = 10 ... 1280. Their report (LambdaLabsML/vllm-benchmark, benchmark_v0.md) ran
vLLM 0.6.0 with `--num-scheduler-steps 10`, which the per-request results confirm: tokens
arrive in chunks of 10, one chunk per 10 decode steps. We replay each run's own requests into one `VllmServer` in V0
multi-step mode with the measured H100 profile and compare the client's
statistics as `benchmark_serving.py` computes them: TTFT at the first chunk with text (a request
whose text is empty keeps TTFT 0, which counts), TPOT = (latency - TTFT) / (output length - 1)
over requests with more than one output token, the output length being the text re-tokenised,
and requests/s (N over the time the last request finished).

Each run's own requests (`autoscaler/data/published-vllm/runs.json`, from the same result files):
the N-prompt run sends the first N prompts of the 1,280, but sampling makes its output lengths
its own (N=40: request 1 wrote 393 tokens, 495 in the 1,280 run). The API server hands a burst to
the engine in an order of its own, not the client's (N=80: requests 48-56 were prefilled first,
0-12 after 58-78); the per-request TTFTs record that order, and the replay hands the requests
over in it. It decides which prefill step each request lands in, hence how long a short request
waits for its first decode group: the TPOT tail of mid-size bursts. A request that streamed no
text has no TTFT to place it; it goes with the request sent before it.

The overheads (per step, per sequence in a step, per new request in the engine, per request in
the API server) are the only free parameters; `fit_overheads` finds them by one
Levenberg-Marquardt least squares over every statistic of every point (relative errors), the
same values for all points.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .profiles import MODEL_SHAPES, MeasuredProfile, load_measured
from .server import EngineSettings, Ledger, Overheads, VllmServer, token_budget

STATISTICS = ("req/s", "ttft mean", "ttft p50", "ttft p99", "tpot mean", "tpot p50", "tpot p99")
PUBLISHED_MODEL = "llama-3-8b"
PUBLISHED_UTILIZATION = 0.95  # --gpu-memory-utilization of the published runs
PUBLISHED_MAX_NUM_SEQS = 1024
PUBLISHED_MAX_MODEL_LEN = 2048  # V0 without chunked prefill: token budget max(max_model_len, 2048)
PUBLISHED_SCHEDULER_STEPS = 10  # vLLM 0.6.0 with multi-step scheduling (LambdaLabs' report)


@dataclass(frozen=True)
class Run:
    """One published burst: each request's output length and its TTFT as measured (0: no text)."""

    out_tokens: np.ndarray
    ttft_ms: np.ndarray

    def engine_order(self) -> np.ndarray:
        """Requests in the order the server prefilled them: by TTFT, one without text after the
        request sent before it, ties in the client's order."""
        ttft = self.ttft_ms.copy()
        for request in range(1, len(ttft)):
            if ttft[request] == 0:
                ttft[request] = ttft[request - 1]
        return np.argsort(ttft, kind="stable")


@dataclass(frozen=True)
class Published:
    """The published runs: prompt sizes of the 1,280 requests (run N sends the first N), one row of
    statistics per burst size and each run's own requests."""

    in_tokens: np.ndarray
    points: dict[int, np.ndarray]  # N -> values in STATISTICS order (ms, req/s)
    runs: dict[int, Run]


def load_runs(path: Path | None = None) -> dict[int, Run]:
    path = path or Path(str(resources.files("autoscaler") / "data" / "published-vllm" / "runs.json"))
    runs = json.loads(path.read_text())["runs"]
    return {int(n): Run(np.array(run["output_lens"]), np.array(run["ttft_ms"], dtype=float)) for n, run in runs.items()}


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
    runs = load_runs()
    for n in points:
        if n not in runs or len(runs[n].out_tokens) != n:
            raise ValueError(f"published point N={n}: no run of {n} requests in runs.json")
    return Published(np.array(lens["input_lens"]), points, runs)


def published_profile() -> MeasuredProfile:
    profile = load_measured(PUBLISHED_MODEL)
    profile.kv_cache_tokens = MODEL_SHAPES[PUBLISHED_MODEL].kv_cache_tokens(PUBLISHED_UTILIZATION)
    return profile


def replay_burst(
    settings: EngineSettings,
    profile: MeasuredProfile,
    in_tokens: np.ndarray,
    out_tokens: np.ndarray,
    *,
    budget: int,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Send every request at time 0 to one server, handed to the engine in `order` (default: the
    client's); the client's statistics in STATISTICS order."""
    n = len(in_tokens)
    finish = [math.nan] * n
    first = [math.nan] * n
    clock = [0.0]

    def finished(request: int, time: float) -> None:
        finish[request] = time

    def dropped(request: int) -> None:
        raise AssertionError(f"request {request} dropped in a burst replay")

    # An output length of 0 (the client re-tokenises the text it received) is a request whose
    # only token was the end of sequence: the engine still computes that one token.
    generated = np.maximum(out_tokens, 1)
    ledger = Ledger([0.0] * n, in_tokens.tolist(), generated.tolist(), first, finished, dropped, math.inf)
    server = VllmServer(settings, profile, ledger, max_num_seqs=PUBLISHED_MAX_NUM_SEQS, budget=budget)
    for request in range(n) if order is None else order.tolist():
        server.submit(request, 0.0)
    while server.next_event < math.inf:
        clock[0] = server.next_event
        server.wake(clock[0])
    finish_s, first_s = np.array(finish), np.array(first)
    # the client sets TTFT on the first chunk with text: a request that streamed none keeps 0,
    # which still counts in the TTFT statistics (benchmark_serving.py of September 2024)
    ttft = np.where(out_tokens > 0, first_s * 1000.0, 0.0)
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
    steps = PUBLISHED_SCHEDULER_STEPS if mode == "v0-prefill-first" else 1
    settings = EngineSettings(mode=mode, overheads=overheads, num_scheduler_steps=steps)
    profile = published_profile()
    budget = max(PUBLISHED_MAX_MODEL_LEN, 2048) if mode == "v0-prefill-first" else token_budget("H100")
    return {
        n: replay_burst(settings, profile, published.in_tokens[:n], run.out_tokens, budget=budget, order=run.engine_order())
        for n, run in sorted(published.runs.items())
        if n in published.points
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
    x = np.array(dataclasses.astuple(start), dtype=float)
    steps = np.array([0.1, 0.001, 0.1, 0.1])  # finite-difference steps, about 1% of plausible values
    r = residuals(x)
    damping = 1e-2
    for _ in range(iterations):
        jacobian = np.stack([(residuals(x + e) - r) / e[i] for i, e in enumerate(np.diag(steps))], axis=1)
        normal = jacobian.T @ jacobian
        gradient = jacobian.T @ r
        while True:
            # (a cost the CPU never makes the longer side of a step has no gradient: keep it solvable)
            scale = np.diag(np.diag(normal)) + 1e-12 * np.eye(len(x))
            candidate = np.maximum(x - np.linalg.solve(normal + damping * scale, gradient), 0.0)
            trial = residuals(candidate)
            if trial @ trial < r @ r:
                x, r, damping = candidate, trial, damping / 3
                break
            damping *= 4
            if damping > 1e6:
                return Overheads(*x)
    return Overheads(*x)
