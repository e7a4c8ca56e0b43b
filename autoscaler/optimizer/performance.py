"""Service-time models of a continuously-batching LLM server, vectorised over candidate rows.

Two profile schemas exist (see ALGORITHMS.md). Rows of both kinds share one batch; `np.where`
picks each row's formula so the queueing code never branches per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .domain import DecodePrefillParams, PerfParams
from .queueing import QueueStats


@dataclass(frozen=True)
class ServiceModel:
    """Per-row profile parameters and request shape; times in ms."""

    iteration_schema: np.ndarray  # True: 2026 perfParms rows; False: 2025 decode/prefill rows
    alpha: np.ndarray
    beta: np.ndarray
    gamma: np.ndarray
    delta: np.ndarray  # only used by 2025 rows
    in_tokens: np.ndarray
    out_tokens: np.ndarray
    max_batch: np.ndarray

    @staticmethod
    def from_rows(params: list[PerfParams], in_tokens, out_tokens, max_batch) -> ServiceModel:
        legacy = np.array([isinstance(p, DecodePrefillParams) for p in params], dtype=bool)
        coefficients = np.array([(p.alpha, p.beta, p.gamma, getattr(p, "delta", 0.0)) for p in params], dtype=np.float64).reshape(
            -1, 4
        )
        return ServiceModel(
            iteration_schema=~legacy,
            alpha=coefficients[:, 0],
            beta=coefficients[:, 1],
            gamma=coefficients[:, 2],
            delta=coefficients[:, 3],
            in_tokens=np.asarray(in_tokens, dtype=np.float64),
            out_tokens=np.asarray(out_tokens, dtype=np.float64),
            max_batch=np.asarray(max_batch, dtype=np.int64),
        )

    def _iteration_time(self, batch: np.ndarray, rows) -> np.ndarray:
        inp, out = self.in_tokens[rows], self.out_tokens[rows]
        compute_tokens = (inp + out) / (out + 1.0)
        memory_tokens = inp + out / 2.0
        per_request = self.beta[rows] * compute_tokens + self.gamma[rows] * memory_tokens
        return self.alpha[rows] + batch * per_request

    def prefill_time(self, batch: np.ndarray, rows=slice(None)) -> np.ndarray:
        """Time to prefill one request when `batch` requests share the server (broadcasts)."""
        inp = self.in_tokens[rows]
        legacy = self.gamma[rows] + self.delta[rows] * inp * batch
        iteration = self._iteration_time(batch, rows) + (self.beta[rows] + self.gamma[rows]) * inp
        return np.where(inp == 0, 0.0, np.where(self.iteration_schema[rows], iteration, legacy))

    def decode_time(self, batch: np.ndarray, rows=slice(None)) -> np.ndarray:
        """Time of one decode step (one output token) at batch size `batch` (broadcasts)."""
        legacy = self.alpha[rows] + self.beta[rows] * batch
        iteration = (
            self._iteration_time(batch, rows)
            + self.beta[rows]
            + self.gamma[rows] * (self.in_tokens[rows] + self.out_tokens[rows] / 2.0)
        )
        return np.where(self.iteration_schema[rows], iteration, legacy)

    def service_rates(self, rows: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """mu(n) in requests/ms of rows `rows` at batch sizes `batch` (integers >= 1; broadcasts)."""
        out = self.out_tokens[rows]
        decode_steps = np.where(self.iteration_schema[rows], out, out - 1.0)
        service_time = self.prefill_time(batch, rows) + decode_steps * self.decode_time(batch, rows)
        return batch / service_time

    def latencies(self, rows: np.ndarray, stats: QueueStats) -> tuple[np.ndarray, np.ndarray]:
        """(ITL, TTFT) in ms of rows at their solved queue state; TTFT includes queueing."""
        out = self.out_tokens[rows]
        # 2025: the batch size n that explains the mean service time, then the profile at n
        decode_tokens = out - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            n_eff = (stats.serv_time - self.gamma[rows] - self.alpha[rows] * decode_tokens) / (
                self.delta[rows] * self.in_tokens[rows] + self.beta[rows] * decode_tokens
            )
        n_eff = np.clip(np.nan_to_num(n_eff, nan=0.0), 0.0, self.max_batch[rows])
        legacy_itl = self.alpha[rows] + self.beta[rows] * n_eff
        legacy_ttft = stats.wait_time + self.prefill_time(n_eff, rows)
        # 2026: prefill at the mean batch, the rest of the service time spread over the tokens
        prefill = self.prefill_time(stats.num_in_service, rows)
        itl = (stats.serv_time - prefill) / out
        ttft = stats.wait_time + prefill + itl
        iteration = self.iteration_schema[rows]
        return np.where(iteration, itl, legacy_itl), np.where(iteration, ttft, legacy_ttft)
