"""A literal, one-candidate-at-a-time transcription of the queueing model and SLO sizing.

It walks all K = 11N states of the chain in Python and bisects like Inferno's Go code. It is
slow on purpose: tests hold the vectorised optimizer to it, and the benchmark measures the
vectorised code against it as the naive baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .domain import DecodePrefillParams, PerfParams
from .queueing import QUEUE_TO_BATCH_RATIO
from .sizing import RATE_RANGE_MARGIN, SEARCH_MAX_ITERATIONS, SEARCH_TOLERANCE, TPS_SAFETY_FRACTION


@dataclass(frozen=True)
class ReferenceResult:
    max_rate_per_replica: float  # requests/second
    num_replicas: int
    itl_ms: float
    ttft_ms: float


def _prefill(p: PerfParams, inp: float, out: float, n: float) -> float:
    if inp == 0:
        return 0.0
    if isinstance(p, DecodePrefillParams):
        return p.gamma + p.delta * inp * n
    return _iteration(p, inp, out, n) + (p.beta + p.gamma) * inp


def _iteration(p: PerfParams, inp: float, out: float, n: float) -> float:
    return p.alpha + n * (p.beta * (inp + out) / (out + 1) + p.gamma * (inp + out / 2))


def _decode(p: PerfParams, inp: float, out: float, n: float) -> float:
    if isinstance(p, DecodePrefillParams):
        return p.alpha + p.beta * n
    return _iteration(p, inp, out, n) + p.beta + p.gamma * (inp + out / 2)


def service_rates(p: PerfParams, inp: float, out: float, max_batch: int) -> list[float]:
    steps = out - 1 if isinstance(p, DecodePrefillParams) else out
    return [n / (_prefill(p, inp, out, n) + steps * _decode(p, inp, out, n)) for n in range(1, max_batch + 1)]


def analyze(p: PerfParams, inp: float, out: float, max_batch: int, lam: float) -> tuple[float, float, float]:
    """(ITL ms, TTFT ms, throughput req/ms) of one server at arrival rate `lam` req/ms."""
    mu = service_rates(p, inp, out, max_batch)
    capacity = max_batch + QUEUE_TO_BATCH_RATIO * max_batch
    prob = [1.0]
    for n in range(capacity):
        prob.append(prob[-1] * lam / mu[min(n, max_batch - 1)])
    total = sum(prob)
    prob = [x / total for x in prob]
    in_system = sum(n * x for n, x in enumerate(prob))
    in_service = sum(min(n, max_batch) * x for n, x in enumerate(prob))
    throughput = lam * (1 - prob[-1])
    resp, serv = in_system / throughput, in_service / throughput
    wait = max(resp - serv, 0.0)
    if isinstance(p, DecodePrefillParams):
        steps = out - 1
        n_eff = (serv - p.gamma - p.alpha * steps) / (p.delta * inp + p.beta * steps)
        n_eff = min(max(n_eff, 0.0), max_batch)
        return p.alpha + p.beta * n_eff, wait + _prefill(p, inp, out, n_eff), throughput
    prefill = _prefill(p, inp, out, in_service)
    itl = (serv - prefill) / out
    return itl, wait + prefill + itl, throughput


def _largest_rate(metric, target: float, low: float, high: float) -> float | None:
    def close(y: float) -> bool:
        return y == target or abs((y - target) / target) <= SEARCH_TOLERANCE

    y_low, y_high = metric(low), metric(high)
    if close(y_low):
        return low
    if close(y_high):
        return high
    if target < y_low:
        return None
    if target > y_high:
        return high
    x = low
    for _ in range(SEARCH_MAX_ITERATIONS):
        x = 0.5 * (low + high)
        y = metric(x)
        if close(y):
            break
        if target < y:
            high = x
        else:
            low = x
    return x


def size(
    p: PerfParams, inp: float, out: float, max_batch: int, ttft: float, itl: float, tps: float, demand: float, min_replicas: int
) -> ReferenceResult | None:
    """Size one candidate for `demand` requests/second; None if no rate meets the SLOs."""
    mu = service_rates(p, inp, out, max_batch)
    low, high = mu[0] * RATE_RANGE_MARGIN, mu[-1] * (1 - RATE_RANGE_MARGIN)
    rate = high * (1 - TPS_SAFETY_FRACTION) if tps > 0 else high
    for target, pick in ((ttft, 1), (itl, 0)):
        if target > 0:
            found = _largest_rate(lambda x, pick=pick: analyze(p, inp, out, max_batch, x)[pick], target, low, high)
            if found is None:
                return None
            rate = min(rate, found)
    per_replica = analyze(p, inp, out, max_batch, rate)[2] * 1000
    replicas = max(math.ceil(demand / per_replica), min_replicas)
    itl_ms, ttft_ms, _ = analyze(p, inp, out, max_batch, demand / replicas / 1000)
    return ReferenceResult(per_replica, replicas, itl_ms, ttft_ms)
