"""Sizes every (server, accelerator) candidate at once: the largest per-replica rate that meets
the SLOs, the replica count for the load, and the latencies the model predicts at that count.

All candidates form one batch of queueing chains. Candidates with identical profile, request
shape, batch limit and targets share a row, so services of the same model and class cost one
search. The SLO searches of all rows run as one lock-step root search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .domain import Allocation, Server, System
from .performance import ServiceModel
from .queueing import ChainBatch

RATE_RANGE_MARGIN = 0.001  # search between 0.1% of mu(1) and 99.9% of mu(N)
TPS_SAFETY_FRACTION = 0.1  # a throughput target runs the server 10% below its maximum rate
SEARCH_TOLERANCE = 1e-6
SEARCH_MAX_ITERATIONS = 100


@dataclass(frozen=True)
class Candidate:
    server_index: int
    accelerator: str
    row: int  # row of the shared chain batch
    max_batch: int
    zero_load: bool


@dataclass(frozen=True)
class RateSearch:
    """Rows whose metric should reach `target` within [low, high] of arrival rate (req/ms)."""

    rows: np.ndarray
    target: np.ndarray
    low: np.ndarray
    high: np.ndarray


def within_tolerance(value: np.ndarray, target: np.ndarray, tolerance: float = SEARCH_TOLERANCE) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return (value == target) | ((target != 0) & (np.abs((value - target) / target) <= tolerance))


def search_rates(search: RateSearch, metric: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Largest rate per row whose metric, rising with the rate, meets the target: (rate, feasible).

    A metric above the target already at `low` is infeasible; one at or below it at `high` takes
    `high`. Otherwise search until the metric is within a relative 1e-6 of the target, the
    stopping rule Inferno uses. The metrics are smooth, so bracketed regula falsi with the
    Illinois rule needs far fewer solves than bisection; all open rows advance in one numpy call.
    """
    target, low, high = search.target, search.low, search.high
    at_low = metric(search.rows, low)
    at_high = metric(search.rows, high)
    rate = np.full(len(target), np.nan)
    hit_low = within_tolerance(at_low, target)
    broken = ~(np.isfinite(at_low) & np.isfinite(at_high))
    infeasible = broken | (~hit_low & (at_low > target))
    reaches_high = ~infeasible & ~hit_low & ((at_high <= target) | within_tolerance(at_high, target))
    rate[hit_low] = low[hit_low]
    rate[reaches_high] = high[reaches_high]

    active = np.flatnonzero(~(hit_low | infeasible | reaches_high))
    # excess g = metric - target rises from < 0 at a to > 0 at b
    a, b = low[active], high[active]
    g_a, g_b = at_low[active] - target[active], at_high[active] - target[active]
    last_side = np.zeros(active.size)
    for _ in range(SEARCH_MAX_ITERATIONS):
        if active.size == 0:
            break
        x = b - g_b * (b - a) / (g_b - g_a)
        x = np.where((x > a) & (x < b), x, 0.5 * (a + b))
        value = metric(search.rows[active], x)
        rate[active] = x
        g_x = value - target[active]
        above = g_x > 0
        # Illinois: halve the stale end's excess when the same end moves twice in a row
        g_a = np.where(above & (last_side > 0), 0.5 * g_a, g_a)
        g_b = np.where(~above & (last_side < 0), 0.5 * g_b, g_b)
        b, g_b = np.where(above, x, b), np.where(above, g_x, g_b)
        a, g_a = np.where(above, a, x), np.where(above, g_a, g_x)
        last_side = np.where(above, 1.0, -1.0)
        keep = ~within_tolerance(value, target[active])
        active, a, b, g_a, g_b, last_side = (v[keep] for v in (active, a, b, g_a, g_b, last_side))
    return rate, ~infeasible


class CandidateBatch:
    """The shared queueing rows of all candidates, with each row's SLO targets."""

    def __init__(self, model: ServiceModel, ttft: np.ndarray, itl: np.ndarray, tps: np.ndarray):
        self.model = model
        self.target_ttft, self.target_itl, self.target_tps = ttft, itl, tps
        self.chains = ChainBatch(model.service_rates, model.max_batch)
        self.valid = self.chains.valid  # rows with a finite, positive rate at every batch size
        self.rate_min = self.chains.mu_first * RATE_RANGE_MARGIN
        self.rate_max = self.chains.mu_full * (1.0 - RATE_RANGE_MARGIN)

    def latencies(self, rows: np.ndarray, rate: np.ndarray):
        """(ITL, TTFT, queue figures) of rows at arrival rates in requests/ms."""
        stats = self.chains.solve(rows, rate)
        itl, ttft = self.model.latencies(rows, stats)
        return itl, ttft, stats

    def max_rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the arrival rate (req/ms) that meets all its SLOs, and whether one exists.

        Both latencies rise with the rate, so the largest rate meeting both is where the worse
        of latency/SLO reaches 1: one search per row instead of one per target.
        """
        with np.errstate(divide="ignore"):
            inverse_ttft = np.where(self.target_ttft > 0, 1.0 / self.target_ttft, 0.0)
            inverse_itl = np.where(self.target_itl > 0, 1.0 / self.target_itl, 0.0)
        rows = np.flatnonzero(self.valid & ((inverse_ttft > 0) | (inverse_itl > 0)))

        def worst_slo_ratio(idx: np.ndarray, rate: np.ndarray) -> np.ndarray:
            itl, ttft, _ = self.latencies(idx, rate)
            return np.maximum(ttft * inverse_ttft[idx], itl * inverse_itl[idx])

        found, feasible = search_rates(
            RateSearch(rows, np.ones(len(rows)), self.rate_min[rows], self.rate_max[rows]), worst_slo_ratio
        )
        best = np.where(self.target_tps > 0, self.rate_max * (1.0 - TPS_SAFETY_FRACTION), self.rate_max)
        best[rows] = np.minimum(best[rows], found)
        ok = self.valid.copy()
        ok[rows] &= feasible
        return best, ok


def _candidate_rows(system: System):
    """Expand servers into candidates, sharing one row between identical sizing problems."""
    keys: dict[tuple, int] = {}
    params, inputs, outputs, batches, ttft, itl, tps = [], [], [], [], [], [], []
    candidates: list[Candidate] = []
    for index, server in enumerate(system.servers):
        load = server.load
        zero_load = load.is_zero
        if zero_load and server.min_replicas == 0:
            continue  # nothing to serve and nothing to keep warm
        target = system.classes[server.class_name].targets[server.model]
        for accelerator in allowed_accelerators(system, server):
            profile = system.profiles[(server.model, accelerator)]
            if server.max_batch_size > 0:
                max_batch = server.max_batch_size
            elif zero_load:
                max_batch = profile.max_batch_size
            else:
                max_batch = profile.batch_limit(load.avg_in_tokens, load.avg_out_tokens)
            out_tokens = max(load.avg_out_tokens, 1)
            # the problem is the profile (model, accelerator), the targets and the request shape:
            # servers of different classes (or calibrated copies of one) with equal targets share it
            key = (server.model, accelerator, target, load.avg_in_tokens, out_tokens, max_batch)
            row = keys.get(key)
            if row is None:
                row = keys[key] = len(params)
                params.append(profile.params)
                inputs.append(load.avg_in_tokens)
                outputs.append(out_tokens)
                batches.append(max_batch)
                ttft.append(target.ttft_ms)
                itl.append(target.itl_ms)
                tps.append(target.tps)
            candidates.append(Candidate(index, accelerator, row, max_batch, zero_load))
    if not candidates:
        return candidates, None
    model = ServiceModel.from_rows(params, inputs, outputs, batches)
    return candidates, CandidateBatch(model, np.array(ttft), np.array(itl), np.array(tps))


def allowed_accelerators(system: System, server: Server) -> list[str]:
    """The accelerators a server may be placed on that have a profile for its model."""
    if server.keep_accelerator and server.current is not None and server.current.accelerator:
        allowed = [server.current.accelerator]
    else:
        allowed = [acc for acc in system.accelerators if not server.accelerators or acc in server.accelerators]
    return [acc for acc in allowed if (server.model, acc) in system.profiles]


def size_candidates(system: System) -> dict[str, list[Allocation]]:
    """Every feasible allocation of every server, value set to cost (penalties come later)."""
    candidates, batch = _candidate_rows(system)
    result: dict[str, list[Allocation]] = {server.name: [] for server in system.servers}
    if batch is None:
        return result
    best_rate, feasible = batch.max_rates()
    row_ok = feasible & np.isfinite(best_rate)
    all_rows = np.arange(len(best_rate))
    capacity_per_replica = np.full(len(best_rate), np.nan)
    if row_ok.any():
        _, _, at_limit = batch.latencies(all_rows[row_ok], best_rate[row_ok])
        capacity_per_replica[row_ok] = at_limit.throughput * 1000.0  # requests/second

    kept: list[tuple[Candidate, int]] = []
    rates = []
    for cand in candidates:
        server = system.servers[cand.server_index]
        if cand.zero_load:
            if not batch.valid[cand.row]:
                continue
            replicas = server.min_replicas
            rates.append(batch.rate_min[cand.row])
        else:
            if not row_ok[cand.row]:
                continue
            total_rate = _demand(system, server)
            # a load too small for the quotient to round up still needs one replica
            replicas = max(math.ceil(total_rate / capacity_per_replica[cand.row]), server.min_replicas, 1)
            rates.append(total_rate / replicas / 1000.0)
        kept.append((cand, replicas))
    if not kept:
        return result
    rows = np.array([cand.row for cand, _ in kept])
    itl, ttft, _ = batch.latencies(rows, np.array(rates))
    for (cand, replicas), itl_ms, ttft_ms in zip(kept, itl.tolist(), ttft.tolist(), strict=True):
        server = system.servers[cand.server_index]
        accelerator = system.accelerators[cand.accelerator]
        profile = system.profiles[(server.model, cand.accelerator)]
        cost = accelerator.cost * profile.acc_count * replicas
        result[server.name].append(
            Allocation(
                server=server.name,
                accelerator=cand.accelerator,
                num_replicas=replicas,
                max_batch=cand.max_batch,
                cost=cost,
                value=cost,
                itl_ms=itl_ms,
                ttft_ms=ttft_ms,
                max_rate_per_replica=0.0 if cand.zero_load else float(capacity_per_replica[cand.row]),
            )
        )
    return result


def _demand(system: System, server: Server) -> float:
    """Requests/second the server must carry: its arrivals, or its tokens/s target in requests."""
    target = system.classes[server.class_name].targets[server.model]
    if target.tps > 0:
        return target.tps / server.load.avg_out_tokens
    return server.load.arrival_rate_rpm / 60.0
