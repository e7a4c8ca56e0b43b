"""A batch of state-dependent M/M/1/K queues, one per row, solved together with numpy.

Each row models one continuously-batching server: with n requests present, min(n, N) run in
the batch and the departure rate is mu(min(n, N)); at most K = N + queue_ratio*N requests are
held, arrivals beyond that are lost. Above N the chain is geometric with ratio lambda/mu(N), so
that tail is summed in closed form and a solve costs O(N) per row rather than O(K).

Memory is bounded whatever the batch limit: the log-rate prefix sums are stored for states up to
a fixed width only, and the states of a larger batch are streamed in blocks of that width with
running sums (rescaled as the peak moves), so a row with N = 150,000 costs rows x width memory,
not rows x N. Nothing is truncated: every state up to N is summed, so the figures equal those of
the one-block solve up to floating-point rounding (tests hold them to 1e-11 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

QUEUE_TO_BATCH_RATIO = 10
# states per stored or streamed block, 8 KiB a row: most batch limits (a few hundred) fit in one
# block; a wider chain costs a pass over its rates per solve instead of rows x N memory
MAX_WIDTH = 1024
# requests/ms (one request in ~30 years): latencies here equal the zero-load limit to ~1e-9
MIN_ARRIVAL_RATE = 1e-12

# mu(n) in requests/ms for row indices (a column) at batch sizes n >= 1 (a row); broadcasts
RateFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Steady-state figures per row; times in ms, rates in requests/ms."""

    throughput: np.ndarray
    num_in_system: np.ndarray
    num_in_service: np.ndarray
    resp_time: np.ndarray
    serv_time: np.ndarray
    wait_time: np.ndarray


def _matrix_rates(matrix: np.ndarray) -> RateFunction:
    """Rates given as a matrix, matrix[i, j] = mu_i(j + 1), read as a rate function."""
    width = matrix.shape[1]
    return lambda rows, batch: matrix[rows, np.minimum(batch, width) - 1]


@dataclass
class _Sums:
    """Running weight sums of a block of rows, scaled by exp(-peak) so nothing overflows.

    Streaming only regroups the sums: each block adds its weights exactly as a one-block solve
    would, and earlier sums are rescaled by exp(old peak - new peak) <= 1 when the peak moves,
    so no state is dropped and the error is rounding (a few ulps per block), not truncation.
    """

    peak: np.ndarray
    mass: np.ndarray
    count: np.ndarray
    at_full: np.ndarray

    @staticmethod
    def empty(rows: int) -> _Sums:
        return _Sums(np.full(rows, -np.inf), np.zeros(rows), np.zeros(rows), np.zeros(rows))

    def add(self, log_weights: np.ndarray, states: np.ndarray, n_batch: np.ndarray) -> None:
        peak = np.maximum(self.peak, log_weights.max(axis=1))
        shrink = np.exp(self.peak - peak)  # 0 for the first block (peak was -inf)
        weights = np.exp(log_weights - peak[:, None])
        offset = n_batch - int(states[0])
        holds_full = (offset >= 0) & (offset < states.size)
        full = weights[np.arange(len(peak)), np.clip(offset, 0, states.size - 1)]
        self.mass = self.mass * shrink + weights.sum(axis=1)
        self.count = self.count * shrink + weights @ states
        self.at_full = self.at_full * shrink + np.where(holds_full, full, 0.0)
        self.peak = peak


class ChainBatch:
    """Rows of birth-death chains given their state-dependent service rates mu(1..N)."""

    def __init__(
        self,
        service_rates: np.ndarray | RateFunction,
        max_batch: np.ndarray,
        queue_ratio: int = QUEUE_TO_BATCH_RATIO,
        max_width: int | None = None,
    ):
        """`service_rates`: a function of (rows, batch sizes), or a matrix whose [i, j] is
        mu_i(j + 1) for j < max_batch[i] (entries beyond are ignored). Rows with a rate that is
        not finite and positive somewhere in 1..N are marked invalid and must not be solved."""
        self._rates = _matrix_rates(service_rates) if isinstance(service_rates, np.ndarray) else service_rates
        self.max_batch = np.asarray(max_batch, dtype=np.int64)
        rows = len(self.max_batch)
        self.tail_len = queue_ratio * self.max_batch
        self._width = max(min(int(self.max_batch.max(initial=1)), max_width or MAX_WIDTH), 1)
        self._max_n = int(self.max_batch.max(initial=1))
        everyone = np.arange(rows)
        states = np.arange(self._width + 1)
        self._states = states.astype(np.float64)
        self._in_batch = states[None, :] <= self.max_batch[:, None]
        log_mu, self.valid = self._log_rates(everyone, states[1:])
        self._log_mu_cumsum = np.concatenate([np.zeros((rows, 1)), np.cumsum(log_mu, axis=1)], axis=1)
        wide = np.flatnonzero(self.max_batch > self._width)
        for first in range(self._width + 1, self._max_n + 1, self._width):
            _, ok = self._log_rates(wide, np.arange(first, min(first + self._width, self._max_n + 1)))
            self.valid[wide] &= ok
        with np.errstate(divide="ignore", invalid="ignore"):
            self.mu_first = np.where(self.valid, self._rates(everyone, np.ones(rows, dtype=np.int64)), np.nan)
            self.mu_full = np.where(self.valid, self._rates(everyone, np.maximum(self.max_batch, 1)), np.nan)
        self._bucket = np.ceil(np.log2(np.maximum(self.max_batch, 1))).astype(np.int64)

    def __len__(self) -> int:
        return len(self.max_batch)

    def _log_rates(self, rows: np.ndarray, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log mu of rows at batch sizes (0 beyond each row's N), and whether all were valid."""
        in_batch = batch[None, :] <= self.max_batch[rows, None]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            mu = self._rates(rows[:, None], batch[None, :])
            good = np.isfinite(mu) & (mu > 0)
            log_mu = np.log(np.where(in_batch & good, mu, 1.0))
        return log_mu, np.all(good | ~in_batch, axis=1)

    def solve(self, rows: np.ndarray, arrival_rate: np.ndarray) -> QueueStats:
        """Solve rows `rows` at arrival rates (requests/ms) below their full-batch service rate."""
        rows = np.asarray(rows)
        # Below MIN_ARRIVAL_RATE the figures are the zero-load limit to double precision; a
        # denormal rate would underflow the state probabilities to 0/0 (NaN latencies).
        lam = np.broadcast_to(np.maximum(np.asarray(arrival_rate, dtype=np.float64), MIN_ARRIVAL_RATE), rows.shape)
        # rows are solved in blocks of similar N so small batches do not pay for the widest one
        buckets = self._bucket[rows]
        figures = np.empty((6, len(rows)))
        for bucket in np.unique(buckets):
            picked = np.flatnonzero(buckets == bucket)
            figures[:, picked] = self._solve_block(rows[picked], lam[picked], min(1 << int(bucket), self._max_n))
        return QueueStats(*figures)

    def _solve_block(self, rows: np.ndarray, lam: np.ndarray, top: int) -> tuple[np.ndarray, ...]:
        """Figures of rows whose batch limits are at most `top`."""
        n_batch = self.max_batch[rows]
        log_lam = np.log(lam)[:, None]
        stored = min(top, self._width) + 1
        states = self._states[:stored]
        log_weights = log_lam * states - self._log_mu_cumsum[rows, :stored]
        log_weights[~self._in_batch[rows, :stored]] = -np.inf
        # the tail above N only shrinks when lambda < mu(N), so the peak lies within 0..N
        sums = _Sums.empty(len(rows))
        sums.add(log_weights, states, n_batch)
        log_mu_sum = self._log_mu_cumsum[rows, stored - 1]
        for first in range(stored, top + 1, self._width):
            batch = np.arange(first, min(first + self._width, top + 1))
            log_mu, _ = self._log_rates(rows, batch)
            cumulative = log_mu_sum[:, None] + np.cumsum(log_mu, axis=1)
            log_mu_sum = cumulative[:, -1]
            log_weights = log_lam * batch - cumulative
            log_weights[batch[None, :] > n_batch[:, None]] = -np.inf
            sums.add(log_weights, batch.astype(np.float64), n_batch)
        head_mass, head_count, at_full = sums.mass, sums.count, sums.at_full

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
