"""Ground truth for simulated servers: how long an engine step takes.

Two sources: step-time tables measured on an H100 (interpolated; the optimizer only ever sees a
model fitted to them, so its model error shows in the results), and Inferno's perfParms read
physically (alpha per iteration, beta per token computed, gamma per token of KV read).

A vLLM step (decodes and prefill chunks together) costs what its tokens cost in the weight
matmuls, which are memory-bound up to a few hundred tokens and compute-bound beyond, plus the
attention's read of every decode's KV context, which is linear in the context summed over the
batch: `linear_ms(tokens) + kv_read_ms * context_sum`. Both come from the same tables:
`kv_read_ms` from the step's growth between the two measured contexts, `linear_ms` from the
decode steps less that read (up to the largest measured batch, 256) and from the prefills above
(a prefill of t tokens is t tokens through the same matmuls). The per-step CPU costs of the
engine are not in these GPU profiles; `server.py` adds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

from ..optimizer.domain import IterationParams, PrefillLine

GPU_MEMORY_BYTES = 80e9
GPU_MEMORY_UTILIZATION = 0.9  # vLLM's default share of GPU memory for weights + KV cache
ACTIVATION_RESERVE_BYTES = 2e9
MAX_SIMULATED_BATCH = 1024


class StepTimes(Protocol):
    """What the simulator needs to know about a (model, GPU) pair."""

    kv_cache_tokens: int

    kv_read_ms: float  # per token of KV context a decode reads in a step

    def linear_ms(self, tokens: int) -> float:
        """A step's cost apart from the attention's KV read: `tokens` through the weights."""
        ...

    def decode_step_ms(self, batch: int, mean_context: float) -> float: ...

    def prefill_ms(self, tokens: int) -> float: ...


@dataclass(frozen=True)
class ModelShape:
    """Enough of a transformer's shape to size its weights and KV cache."""

    parameters: float
    layers: int
    kv_heads: int
    head_dim: int

    def kv_cache_tokens(self, utilization: float = GPU_MEMORY_UTILIZATION) -> int:
        weights = 2 * self.parameters  # bf16
        per_token = 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16
        free = GPU_MEMORY_BYTES * utilization - weights - ACTIVATION_RESERVE_BYTES
        return int(free // per_token)


# public architecture figures of the measured shapes
MODEL_SHAPES = {
    "llama-3.2-1b": ModelShape(1.24e9, 16, 8, 64),
    "llama-3-8b": ModelShape(8.03e9, 32, 8, 128),
    "llama-2-13b": ModelShape(13.0e9, 40, 40, 128),
}


class MeasuredProfile:
    """Interpolates a measured profile: decode step by batch and context, prefill by tokens."""

    def __init__(self, document: dict, shape: ModelShape):
        self.name = document["shape"]
        self.kv_cache_tokens = shape.kv_cache_tokens()
        decode = document["decode"]
        contexts = sorted({row["ctx"] for row in decode})
        low_ctx, high_ctx = contexts[0], contexts[-1]
        batches = np.arange(1, MAX_SIMULATED_BATCH + 1)
        at = {}
        for ctx in (low_ctx, high_ctx):
            points = sorted((row["batch"], row["step_ms"]) for row in decode if row["ctx"] == ctx)
            measured_batch = np.array([b for b, _ in points], dtype=float)
            measured_ms = np.array([ms for _, ms in points])
            # beyond the largest measured batch, continue the last measured slope
            slope = (measured_ms[-1] - measured_ms[-2]) / (measured_batch[-1] - measured_batch[-2])
            at[ctx] = np.where(
                batches <= measured_batch[-1],
                np.interp(batches, measured_batch, measured_ms),
                measured_ms[-1] + slope * (batches - measured_batch[-1]),
            )
        self._step_at_low = at[low_ctx].tolist()
        self._step_per_ctx_token = ((at[high_ctx] - at[low_ctx]) / (high_ctx - low_ctx)).tolist()
        self._low_ctx = low_ctx
        single = sorted((row["tokens"], row["ms"]) for row in document["prefill"] if row["batch"] == 1)
        self._prefill_tokens = np.array([t for t, _ in single], dtype=float)
        self._prefill_ms = np.array([ms for _, ms in single])
        self._prefill_slope = (self._prefill_ms[-1] - self._prefill_ms[-2]) / (
            self._prefill_tokens[-1] - self._prefill_tokens[-2]
        )
        self._decode_rows = [(row["batch"], row["ctx"], row["step_ms"]) for row in decode]
        self._prefill_rows = single
        self._prefills = document["prefill"]
        self.kv_read_ms, tokens, linear = _step_model(decode, document["prefill"])
        # a table by token count: the simulator asks for one every engine step
        self._linear = np.interp(np.arange(int(tokens[-1]) + 1), tokens, linear).tolist()
        self._linear_slope = (linear[-1] - linear[-2]) / (tokens[-1] - tokens[-2])

    def linear_ms(self, tokens: int) -> float:
        table = self._linear
        if tokens < len(table):
            return table[tokens]
        # compute-bound beyond the largest measured step: linear in tokens
        return table[-1] + self._linear_slope * (tokens - len(table) + 1)

    def decode_step_ms(self, batch: int, mean_context: float) -> float:
        index = min(batch, MAX_SIMULATED_BATCH) - 1
        step = self._step_at_low[index] + self._step_per_ctx_token[index] * (mean_context - self._low_ctx)
        return max(step, self._step_at_low[0] * 0.5)

    def prefill_ms(self, tokens: int) -> float:
        if tokens <= self._prefill_tokens[-1]:
            return float(np.interp(tokens, self._prefill_tokens, self._prefill_ms))
        return float(self._prefill_ms[-1] + self._prefill_slope * (tokens - self._prefill_tokens[-1]))

    def fitted_params(self) -> IterationParams:
        """Least-squares perfParms (relative error) for the optimizer, from the same tables.

        A decode step of n requests at context c reads as alpha + (n+1)(beta + gamma*c) and a
        single prefill of t tokens as alpha + beta*(t+1) + gamma*2t under the 2026 model.
        """
        rows = [[1.0, n + 1.0, (n + 1.0) * c] for n, c, _ in self._decode_rows]
        rows += [[1.0, t + 1.0, 2.0 * t] for t, _ in self._prefill_rows]
        target = [ms for *_, ms in self._decode_rows] + [ms for _, ms in self._prefill_rows]
        return IterationParams(*_relative_fit(rows, target))

    def fitted_prefill(self) -> PrefillLine:
        """The prefill line a profile would publish beside its perfParms (prefillParms): least
        squares (relative error) of every measured prefill, gamma + delta * tokens."""
        rows = [[1.0, float(row["total_tokens"])] for row in self._prefills]
        return PrefillLine(*_relative_fit(rows, [row["ms"] for row in self._prefills]))


def _relative_fit(rows: list[list[float]], target: list[float]) -> list[float]:
    """Least-squares coefficients of rows . x = target, each row weighted by 1 / its target
    (relative error: short and long steps count alike), each kept non-negative."""
    measured = np.array(target, dtype=float)
    weights = 1.0 / measured
    coefficients, *_ = np.linalg.lstsq(np.array(rows, dtype=float) * weights[:, None], measured * weights, rcond=None)
    return [max(float(c), 0.0) for c in coefficients]


def _step_model(decode: list[dict], prefill: list[dict]) -> tuple[float, np.ndarray, np.ndarray]:
    """(kv_read_ms, tokens, linear_ms) from a profile's decode and prefill rows.

    kv_read_ms: least squares over the batches measured at both contexts, where a step grows by
    kv_read_ms * batch * (context difference). linear_ms: the decode steps less their KV read up
    to the largest measured batch; above it, a line fitted to the prefills of more tokens than
    that batch (the compute-bound regime; small prefills run without CUDA graphs and are
    launch-bound, so their absolute times are not a decode step's), never below the largest
    batch's step. Tables are evaluated at the listed token counts and interpolated between.
    """
    by_batch: dict[int, dict[int, float]] = {}
    for row in decode:
        by_batch.setdefault(row["batch"], {})[row["ctx"]] = row["step_ms"]
    x, y = [], []
    for batch, steps in by_batch.items():
        if len(steps) >= 2:
            low, high = min(steps), max(steps)
            x.append(batch * (high - low))
            y.append(steps[high] - steps[low])
    kv_read_ms = max(float(np.dot(x, y) / np.dot(x, x)), 0.0) if x else 0.0
    largest = max(by_batch)
    batches = sorted(by_batch)
    # a batch measured at two contexts gives two estimates of its linear part: average them
    linear = [float(np.mean([ms - kv_read_ms * b * ctx for ctx, ms in by_batch[b].items()])) for b in batches]
    compute_bound = [(row["total_tokens"], row["ms"]) for row in prefill if row["total_tokens"] > largest]
    tokens = [float(b) for b in batches]
    if len(compute_bound) >= 2:
        t, ms = np.array(compute_bound, dtype=float).T
        slope, intercept = np.polyfit(t, ms, 1)
        for extra in (2 * largest, 4 * largest, 2 * float(t.max())):
            tokens.append(extra)
            linear.append(intercept + slope * extra)
    return kv_read_ms, np.array(tokens), np.maximum.accumulate(linear)  # more tokens never cost less


@dataclass(frozen=True)
class FormulaProfile:
    """Inferno perfParms as physics: a decode iteration computes n tokens and reads n*context
    tokens of KV cache; a prefill computes and writes its prompt."""

    params: IterationParams
    kv_cache_tokens: int

    @property
    def kv_read_ms(self) -> float:
        return self.params.gamma

    def linear_ms(self, tokens: int) -> float:
        return self.params.alpha + self.params.beta * tokens

    def decode_step_ms(self, batch: int, mean_context: float) -> float:
        p = self.params
        return p.alpha + batch * (p.beta + p.gamma * mean_context)

    def prefill_ms(self, tokens: int) -> float:
        p = self.params
        return p.alpha + (p.beta + p.gamma) * tokens


def load_measured(shape_name: str, directory: Path | None = None) -> MeasuredProfile:
    base = directory or Path(str(resources.files("autoscaler") / "data" / "profiles"))
    document = json.loads((base / f"decode_profile_{shape_name}.json").read_text())
    return MeasuredProfile(document, MODEL_SHAPES[shape_name])
