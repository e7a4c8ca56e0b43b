"""SLO attainment of one continuously batching vLLM replica, and its capacity at a goal. Pure.

The optimizer's queueing model sizes mean latencies of a batch with no prefill in it; vLLM runs
other requests' prompts in the same steps as the decodes (V1 chunked prefill within a token
budget), and an SLO counts requests, so a replica's capacity at the SLO is set by the tail. This
model predicts the share of requests within both SLOs at a Poisson arrival rate:

- A step takes the longer of its GPU time, `alpha + beta * tokens + gamma * KV read` (the
  profile's perfParms), and the engine's CPU time for it, per step, per sequence in the step and
  per new request (`EngineCosts`): vLLM processes a step's outputs while the next step runs
  (V1's asynchronous scheduling, V0's asynchronous output processing; ../shared/VLLM.md), as
  the simulator's server steps. Each side is a step of the same form (a fixed cost, a cost per
  decode, a cost per new request): the model predicts with each and keeps, at each rate, the
  side that meets fewer requests (the one whose steps are longer). Work conservation gives the
  mean step on a side: T = fixed / (1 - rho), rho the share of time spent on tokens and
  requests at the rate.
- One request's mean ITL over its d decode steps is alpha' + u * (batch averaged over its
  life) + (prefill work landing in its life) / d. The batch average is the M/G/inf count's time
  average over the request's life (Gaussian, exponential lifetimes); the prefill work is a
  compound Poisson sum of exponential prompts (the Poisson-Gamma mixture, summed exactly below
  EXACT_COUNT prompts, Sankaran's approximation above). Short requests see few prompts but each
  weighs on few steps: that is where the ITL tail is.
- TTFT = the API server's and engine's intake + the prompt's steps + a wait for a seat (batch or
  KV limit, whichever binds), the wait's tail from Erlang C over those seats.
- Output lengths are taken as geometric with the observed mean, prompts as exponential (only
  means are observed); the shares are averaged over the output lengths' quantiles.
- Everything is computed for an array of rates at once (predict_rates): the capacity search
  and the learning each cost a few numpy passes, not one per rate.

`mode="stall"` is the server without chunked prefill (V0 prefill-first): a prompt's step holds
the whole batch, which is the same prefill work landing in the decodes' lives, so the same
formulas hold; they differ in the budget (a stall step is not split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from ..optimizer.domain import IterationParams

LENGTH_QUANTILES = 32  # points of the output-length distribution the shares are averaged over
PROMPT_QUANTILES = 6  # and of the request's own prompt length
HERMITE = np.polynomial.hermite_e.hermegauss(9)  # for the Gaussian batch average
MIN_IDENTIFYING_LOAD = 0.2  # share of a replica's time on token work below which the ITL says little of it
EXACT_COUNT = 8.0  # mean prompts in one request's life below which their mixture is summed exactly
EXACT_TERMS = 48  # terms of that sum: Poisson(8) has no mass left past them
RATE_POINTS = 24  # rates per pass of the capacity search (two passes: 1/576 of the saturating rate)


@dataclass(frozen=True)
class EngineCosts:
    """vLLM's CPU costs beside the GPU profile (ms), overlapping the GPU's (module doc). The
    default is a prior from published vLLM measurements (Llama-3-8B on H100, vLLM 0.6, fitted
    over 49 statistics by benchmarks/published_vllm.py with the step the longer of the two, the
    simulator's FITTED_OVERHEADS): an upper bound for V1."""

    step_ms: float = 3.79  # per step
    seq_ms: float = 0.0565  # per sequence in a step
    request_ms: float = 0.0  # per request, in the step that starts it
    frontend_ms: float = 3.02  # per request in the API server, before the engine sees it


@dataclass(frozen=True)
class Replica:
    """What the model needs of one replica: its profile, seat and KV limits, token budget."""

    params: IterationParams
    max_batch: int
    kv_cache_tokens: int  # 0: unknown (only the batch limit bounds the seats)
    token_budget: int = 8192
    costs: EngineCosts = EngineCosts()
    # measured work over the profile's: scales every per-token and per-request cost (a fitted
    # profile misjudges prefills and KV reads; identify_work_scale learns it from the mean ITL)
    work_scale: float = 1.0


@dataclass(frozen=True)
class Shape:
    in_tokens: float
    out_tokens: float


@dataclass(frozen=True)
class Prediction:
    attainment: float  # share of requests within both SLOs
    ttft_share: float
    itl_share: float
    itl_token_share: float  # as vLLM's ITL histogram counts: every token gap
    step_ms: float  # mean step
    batch: float  # mean running requests
    stable: bool


def _lengths(mean_out: float) -> np.ndarray:
    """Decode steps (output tokens - 1) at evenly spaced quantiles of a geometric output length."""
    q = (np.arange(LENGTH_QUANTILES) + 0.5) / LENGTH_QUANTILES  # geometric: a discretised exponential
    p = 1.0 / max(mean_out, 1.0)
    out = np.ceil(np.log1p(-q) / math.log1p(-p)) if p < 1.0 else np.ones_like(q)
    return np.maximum(out - 1.0, 0.0)


def _exponential_quantiles(count: int) -> np.ndarray:
    """Evenly spaced quantiles of a unit-mean exponential."""
    return -np.log1p(-(np.arange(count) + 0.5) / count)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (Abramowitz & Stegun 26.2.17, absolute error < 7.5e-8): numpy has no erf."""
    t = 1.0 / (1.0 + 0.2316419 * np.abs(z))
    poly = t * (0.319381530 + t * (-0.356563782 + t * (1.781477937 + t * (-1.821255978 + t * 1.330274429))))
    upper = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * poly
    return np.where(z >= 0.0, 1.0 - upper, upper)


def _compound_poisson_cdf(x: np.ndarray, mean_count: np.ndarray, mean_size: float) -> np.ndarray:
    """P(sum of Poisson(mean_count) exponentials of mean `mean_size` <= x), elementwise.

    2 * sum / mean_size is a noncentral chi-square with 0 degrees of freedom and noncentrality
    2 * mean_count; from EXACT_COUNT prompts on, Sankaran's normal approximation of its square
    root holds to ~1e-3. Below, the Poisson mixture is summed exactly: a sum of k exponentials
    <= x  <=>  a Poisson(x / size) count >= k, so P = 1 - sum_k P(K = k) P(N(x/size) < k)."""
    shape = np.broadcast_shapes(np.shape(x), np.shape(mean_count))
    x = np.broadcast_to(np.maximum(x, 0.0), shape).ravel()
    m = np.broadcast_to(np.maximum(mean_count, 1e-300), shape).ravel()
    result = np.empty(x.shape)
    large = m >= EXACT_COUNT
    ml, p = m[large], 1.0 / np.maximum(m[large], EXACT_COUNT)
    # Sankaran (1963) with h = 1/2, the value it takes at 0 degrees of freedom
    z = (np.sqrt(x[large] / (ml * mean_size)) - (1.0 - 0.25 * p - 0.09375 * p * p)) / (0.5 * np.sqrt(2.0 * p) * (1.0 + 0.125 * p))
    result[large] = _normal_cdf(z)
    # below: certain where the sum cannot reach x (beyond 10 standard deviations and more), the
    # chance of no prompt at all where x is 0, and summed term by term (no factorials, no array
    # of terms) in between
    small = ~large
    z_all = x / mean_size
    sure = small & (z_all > m + 10.0 * np.sqrt(2.0 * m) + 20.0)
    result[sure] = 1.0
    none = small & (x <= 0.0)
    result[none] = np.exp(-m[none])
    mid = small & ~sure & ~none
    if mid.any():
        ms, zs = m[mid], z_all[mid]
        count_pmf, arrivals, below, missed = np.exp(-ms), np.exp(-zs), np.zeros(ms.shape), np.zeros(ms.shape)
        for k in range(EXACT_TERMS + 1):
            missed += count_pmf * below  # P(K = k) P(N(z) < k)
            below += arrivals
            count_pmf *= ms / (k + 1)
            arrivals *= zs / (k + 1)
            if k % 8 == 7 and count_pmf.max() < 1e-12:
                break  # the rest of the Poisson's mass is negligible
        result[mid] = 1.0 - missed
    return np.clip(result, 0.0, 1.0).reshape(shape)


def _erlang_c(seats: int, offered: np.ndarray) -> np.ndarray:
    """Probability an arrival waits with `seats` servers at `offered` Erlangs (each < seats).
    Erlang B is a Poisson(offered) pmf at `seats` over its cdf there: summed in log space, all
    offered loads at once."""
    k = np.arange(seats + 1)[:, None]
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, seats + 1)))))[:, None]
    log_load = np.log(np.maximum(offered, 1e-300))[None, :]
    log_pmf = k * log_load - log_fact  # e^-offered cancels in the ratio
    top = log_pmf.max(axis=0)
    blocking = np.exp(log_pmf[-1] - top) / np.sum(np.exp(log_pmf - top), axis=0)
    return np.where(offered > 0.0, blocking / (1.0 - offered / seats * (1.0 - blocking)), 0.0)


@dataclass(frozen=True)
class _Side:
    """One side of a step (module doc): its fixed cost, each decode's, each new request's
    once (ms), and the KV read per token of context that makes a decode's cost vary."""

    fixed: float
    per_decode: float
    per_request: float
    kv_read: float

    def work(self, shape: Shape) -> float:
        """ms one request adds beyond the steps' fixed cost."""
        return self.per_decode * (max(shape.out_tokens, 1.0) - 1.0) + self.per_request


def _gpu(replica: Replica, shape: Shape) -> _Side:
    # a running request is length-biased: geometric outputs leave it about `out` tokens in
    p, w = replica.params, replica.work_scale
    prompt, out = max(shape.in_tokens, 0.0), max(shape.out_tokens, 1.0)
    return _Side(p.alpha, w * (p.beta + p.gamma * (prompt + out)), w * (p.beta + p.gamma) * prompt, p.gamma)


def _cpu(replica: Replica) -> _Side:
    c = replica.costs
    return _Side(c.step_ms, c.seq_ms, c.request_ms + c.seq_ms, 0.0)


def _sides(replica: Replica, shape: Shape) -> list[_Side]:
    """The sides that may set the step: one where it is the longer in every part."""
    gpu, cpu = _gpu(replica, shape), _cpu(replica)
    parts = [
        (g, c)
        for g, c in zip((gpu.fixed, gpu.per_decode, gpu.per_request), (cpu.fixed, cpu.per_decode, cpu.per_request), strict=True)
    ]
    if all(g >= c for g, c in parts):
        return [gpu]
    if all(c >= g for g, c in parts):
        return [cpu]
    return [gpu, cpu]


def saturating_rate(replica: Replica, shape: Shape) -> float:
    """Requests/s at which a replica's GPU or engine CPU would do nothing but this work."""
    return 1000.0 / max(max(side.work(shape) for side in _sides(replica, shape)), 1e-9)


def identify_work_scale(replica: Replica, shape: Shape, rate: float, mean_itl_ms: float) -> float | None:
    """The work scale w under which the model's mean ITL equals a measured one at `rate`
    requests/s per replica. The GPU's ITL is b / (1 - a w) + c w (b the fixed step cost, a w
    the share of time on work, c w a decode's own cost): increasing in w below 1 / a, so the
    smaller root of a c w^2 - (I a + c) w + (I - b) = 0 is the one. None where the window says
    little about it: light load, an ITL the engine's CPU side accounts for (the GPU's work does
    not show), or one the model cannot reach at any scale within [1/8, 8] (the measurement is
    off)."""
    if rate <= 0.0 or not math.isfinite(mean_itl_ms) or mean_itl_ms <= 0.0:
        return None
    gpu = _gpu(replace(replica, work_scale=1.0), shape)
    a = rate / 1000.0 * gpu.work(shape)
    if a < MIN_IDENTIFYING_LOAD:
        return None  # a replica mostly alone: its ITL is the fixed cost, the work hardly shows
    if _side_itl(_cpu(replica), shape, rate) >= mean_itl_ms:
        return None  # the engine's CPU sets the steps
    b, c = gpu.fixed, gpu.per_decode
    if mean_itl_ms <= b:
        return None  # faster than a step with nothing in it
    root = 2.0 * (mean_itl_ms - b) / (mean_itl_ms * a + c + math.sqrt((mean_itl_ms * a - c) ** 2 + 4.0 * a * b * c))
    return root if 0.125 <= root <= 8.0 else None


def _side_itl(side: _Side, shape: Shape, rate: float) -> float:
    rho = rate / 1000.0 * side.work(shape)
    return math.inf if rho >= 1.0 else side.fixed / (1.0 - rho) + side.per_decode


def _mean_itl(replica: Replica, shape: Shape, rate: float) -> float:
    """A request's mean gap between tokens: the mean step with itself in the batch, on the side
    whose steps are longer (math.inf past saturation)."""
    return max(_side_itl(side, shape, rate) for side in _sides(replica, shape))


@dataclass(frozen=True)
class Predictions:
    """Prediction's fields over an array of rates."""

    attainment: np.ndarray
    ttft_share: np.ndarray
    itl_share: np.ndarray
    itl_token_share: np.ndarray
    step_ms: np.ndarray
    batch: np.ndarray
    stable: np.ndarray

    def at(self, i: int) -> Prediction:
        return Prediction(
            *(
                v.item()
                for v in (
                    self.attainment[i],
                    self.ttft_share[i],
                    self.itl_share[i],
                    self.itl_token_share[i],
                    self.step_ms[i],
                    self.batch[i],
                    self.stable[i],
                )
            )
        )


def predict(
    replica: Replica, shape: Shape, rate: float, ttft_slo_ms: float, itl_slo_ms: float, mode: str = "chunked"
) -> Prediction:
    """Attainment of one replica at `rate` requests/s of `shape`."""
    return predict_rates(replica, shape, np.array([rate], dtype=float), ttft_slo_ms, itl_slo_ms, mode).at(0)


def predict_rates(
    replica: Replica,
    shape: Shape,
    rates: np.ndarray,
    ttft_slo_ms: float | np.ndarray,
    itl_slo_ms: float | np.ndarray,
    mode: str = "chunked",
) -> Predictions:
    """Attainment of one replica at each of `rates` (requests/s) of `shape`, in one pass per
    side of the step that may set it (module doc); the SLOs may be arrays beside the rates (one
    pair per rate)."""
    rates = np.asarray(rates, dtype=float)
    sides = [_predict_side(replica, side, shape, rates, ttft_slo_ms, itl_slo_ms, mode) for side in _sides(replica, shape)]
    if len(sides) == 1:
        return sides[0]
    gpu, cpu = sides
    worse = cpu.attainment < gpu.attainment
    return Predictions(*(np.where(worse, getattr(cpu, f.name), getattr(gpu, f.name)) for f in fields(Predictions)))


def _predict_side(
    replica: Replica,
    side: _Side,
    shape: Shape,
    rates: np.ndarray,
    ttft_slo_ms: float | np.ndarray,
    itl_slo_ms: float | np.ndarray,
    mode: str,
) -> Predictions:
    """predict_rates with steps of one side's costs."""
    prompt, out = max(shape.in_tokens, 0.0), max(shape.out_tokens, 1.0)
    decodes = out - 1.0
    u, prefill_work, base, gamma = side.per_decode, side.per_request, side.fixed, side.kv_read
    rho = rates / 1000.0 * (u * decodes + prefill_work)
    idle, stable = rates <= 0.0, (rho < 1.0) & (rates > 0.0)
    lam = np.where(stable, rates, 0.0) / 1000.0  # per ms; the unstable are overwritten below
    step = base / (1.0 - np.where(stable, rho, 0.0))
    batch = lam * decodes * step
    seats = replica.max_batch
    if replica.kv_cache_tokens > 0:
        seats = min(seats, max(int(replica.kv_cache_tokens // (prompt + out)), 1))
    # ---- ITL: over the rates, the quantiles of the decode length and of the request's own prompt
    d = _lengths(out)[None, :, None]
    own_prompt = prompt * _exponential_quantiles(PROMPT_QUANTILES)[None, None, :]
    per_rate = (slice(None), None, None)
    life = d * step[per_rate]
    tau = np.maximum(decodes * step, 1e-9)[per_rate]
    r = life / tau
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        var_avg = np.where(r > 1e-6, batch[per_rate] * 2.0 / r**2 * (r - 1.0 + np.exp(-r)), batch[per_rate])
    # each running request reads its own context: the batch's work varies with who is in it
    var_avg = var_avg * (1.0 + (gamma**2 * (prompt**2 + out**2)) / u**2)
    # a request reads its own context every step, more than the mean's if its prompt is long
    own = d * gamma * (own_prompt + d / 2.0 - (prompt + out))
    itl_slo = np.broadcast_to(np.asarray(itl_slo_ms, dtype=float), rates.shape)[per_rate]
    budget = d * (itl_slo - base) - own  # ms of work a request's life can hold within the SLO
    arriving = lam[per_rate] * life  # mean prompts landing in a request's life
    # the Gaussian's nodes on a leading axis: others running beside the request, as Poisson arrivals see them
    nodes, weights = (v[:, None, None, None] for v in HERMITE)
    others = np.maximum(batch[per_rate] + nodes * np.sqrt(var_avg), 0.0)
    room = budget - d * u * (1.0 + others)  # itself and the others
    shares = np.sum(weights * _compound_poisson_cdf(room, arriving, prefill_work), axis=0)
    shares = np.where(d > 0, shares / math.sqrt(2.0 * math.pi), 1.0)  # one token: no gap to miss
    itl_share = shares.mean(axis=(1, 2))
    tokens = d * np.ones_like(shares)
    itl_token_share = (shares * d).sum(axis=(1, 2)) / np.maximum(tokens.sum(axis=(1, 2)), 1e-9)
    # ---- TTFT: intake, the prompt's steps, a wait for a seat
    chunk = replica.token_budget if mode == "chunked" else math.inf
    prompt_steps = np.maximum(np.ceil(prompt / np.maximum(chunk - batch, 1.0)), 1.0)
    ttft_work = replica.costs.frontend_ms + prompt_steps * step + prefill_work
    offered = lam * (decodes * step + ttft_work)
    seated = offered < seats
    waits = _erlang_c(seats, np.where(seated, offered, 0.0))
    slack = ttft_slo_ms - ttft_work
    hold = decodes * step + ttft_work
    with np.errstate(over="ignore", invalid="ignore"):
        ttft_share = np.where(
            seated & (slack >= 0.0), 1.0 - waits * np.exp(-(seats - offered) * np.maximum(slack, 0.0) / hold), 0.0
        )
    # no load meets everything; past saturation nothing is met
    ttft_share, itl_share, itl_token_share = (
        np.where(idle, 1.0, np.where(stable, v, 0.0)) for v in (ttft_share, itl_share, itl_token_share)
    )
    step = np.where(idle, base, np.where(stable, step, math.inf))
    return Predictions(
        itl_share * ttft_share, ttft_share, itl_share, itl_token_share, step, np.where(stable, batch, 0.0), stable | idle
    )


def capacity(replica: Replica, shape: Shape, ttft_slo_ms: float, itl_slo_ms: float, goal: float, mode: str = "chunked") -> float:
    """The largest rate (req/s) at which the predicted attainment reaches `goal` (0 if none):
    attainment falls with the rate, so two passes of RATE_POINTS rates each, the second inside
    the first's bracket, and a linear interpolation inside the second's."""
    high = saturating_rate(replica, shape)
    if predict(replica, shape, high * 1e-4, ttft_slo_ms, itl_slo_ms, mode).attainment < goal:
        return 0.0
    low = 0.0
    for _ in range(2):
        rates = low + (high - low) * np.arange(1, RATE_POINTS + 1) / (RATE_POINTS + 1)
        shares = predict_rates(replica, shape, rates, ttft_slo_ms, itl_slo_ms, mode).attainment
        met = np.flatnonzero(shares >= goal)
        last = met[-1] if met.size else -1  # rates below the first point meet it (checked above)
        low_share = shares[last] if last >= 0 else 1.0
        low, high = (rates[last] if last >= 0 else low), (rates[last + 1] if last + 1 < rates.size else high)
        high_share = shares[last + 1] if last + 1 < rates.size else 0.0
    # attainment is near linear over 1/576 of the saturating rate
    return float(low + (high - low) * (low_share - goal) / max(low_share - high_share, 1e-12))
