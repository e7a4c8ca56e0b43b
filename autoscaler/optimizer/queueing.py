"""A batch of state-dependent M/M/1/K queues, one per row, solved together with numpy.

Each row models one continuously-batching server: with n requests present, min(n, N) run in
the batch and the departure rate is mu(min(n, N)); at most K = N + queue_ratio*N requests are
held, arrivals beyond that are lost. Above N the chain is geometric with ratio lambda/mu(N), so
that tail is summed in closed form and a solve costs O(N) per row rather than O(K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUEUE_TO_BATCH_RATIO = 10


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Steady-state figures per row; times in ms, rates in requests/ms."""

    throughput: np.ndarray
    num_in_system: np.ndarray
    num_in_service: np.ndarray
    resp_time: np.ndarray
    serv_time: np.ndarray
    wait_time: np.ndarray


class ChainBatch:
    """Rows of birth-death chains given their state-dependent service rates mu(1..N)."""

    def __init__(self, service_rates: np.ndarray, max_batch: np.ndarray, queue_ratio: int = QUEUE_TO_BATCH_RATIO):
        """service_rates[i, j] = mu_i(j + 1) for j < max_batch[i]; entries beyond are ignored."""
        rows, width = service_rates.shape
        self.max_batch = np.asarray(max_batch, dtype=np.int64)
        self.tail_len = queue_ratio * self.max_batch
        states = np.arange(width + 1)
        self._states = states.astype(np.float64)
        self._in_batch = states[None, :] <= self.max_batch[:, None]
        self.mu_full = service_rates[np.arange(rows), self.max_batch - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mu = np.log(np.where(self._in_batch[:, 1:], service_rates, 1.0))
        self._log_mu_cumsum = np.concatenate([np.zeros((rows, 1)), np.cumsum(log_mu, axis=1)], axis=1)
        self._bucket = np.ceil(np.log2(np.maximum(self.max_batch, 1))).astype(np.int64)

    def __len__(self) -> int:
        return len(self.max_batch)

    def solve(self, rows: np.ndarray, arrival_rate: np.ndarray) -> QueueStats:
        """Solve rows `rows` at arrival rates (requests/ms) below their full-batch service rate."""
        rows = np.asarray(rows)
        lam = np.broadcast_to(np.asarray(arrival_rate, dtype=np.float64), rows.shape)
        # rows are solved in blocks of similar N so small batches do not pay for the widest one
        buckets = self._bucket[rows]
        figures = np.empty((6, len(rows)))
        for bucket in np.unique(buckets):
            picked = np.flatnonzero(buckets == bucket)
            width = min(1 << int(bucket), self._states.size - 1) + 1
            figures[:, picked] = self._solve_block(rows[picked], lam[picked], width)
        return QueueStats(*figures)

    def _solve_block(self, rows: np.ndarray, lam: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
        n_batch = self.max_batch[rows]
        states = self._states[:width]
        log_weights = np.log(lam)[:, None] * states - self._log_mu_cumsum[rows, :width]
        log_weights[~self._in_batch[rows, :width]] = -np.inf
        # the tail above N only shrinks when lambda < mu(N), so the peak lies within 0..N
        weights = np.exp(log_weights - log_weights.max(axis=1, keepdims=True))
        head_mass = weights.sum(axis=1)
        head_count = weights @ states
        at_full = weights[np.arange(len(rows)), n_batch]

        ratio = lam / self.mu_full[rows]
        tail_len = self.tail_len[rows]
        ratio_pow = ratio**tail_len
        gap = 1.0 - ratio
        tail_mass = ratio * (1.0 - ratio_pow) / gap  # sum_{j=1..M} r^j
        tail_extra = ratio * (1.0 - (tail_len + 1) * ratio_pow + tail_len * ratio_pow * ratio) / gap**2  # sum j r^j

        total = head_mass + at_full * tail_mass
        num_in_system = (head_count + at_full * (n_batch * tail_mass + tail_extra)) / total
        num_in_service = (head_count + at_full * n_batch * tail_mass) / total
        loss = at_full * ratio_pow / total
        throughput = lam * (1.0 - loss)
        resp_time = num_in_system / throughput
        serv_time = num_in_service / throughput
        wait_time = np.maximum(resp_time - serv_time, 0.0)
        return throughput, num_in_system, num_in_service, resp_time, serv_time, wait_time
