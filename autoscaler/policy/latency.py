"""SLO attainment of one continuously batching vLLM replica, and its capacity at a goal. Pure.

The optimizer's queueing model sizes mean latencies of a batch with no prefill in it; vLLM runs
other requests' prompts in the same steps as the decodes (V1 chunked prefill within a token
budget), and an SLO counts requests, so a replica's capacity at the SLO is set by the tail. This
model predicts the share of requests within both SLOs at a Poisson arrival rate:

- A step costs `alpha + beta * tokens + gamma * KV read` (the profile's perfParms) plus the
  engine's CPU per step, per sequence in the step and per new request (`EngineCosts`). Work
  conservation gives the mean step: T = (alpha + step CPU) / (1 - rho), rho the share of time
  spent on tokens and requests at the rate.
- One request's mean ITL over its d decode steps is alpha' + u * (batch averaged over its
  life) + (prefill work landing in its life) / d. The batch average is the M/G/inf count's time
  average over the request's life (Gaussian, exponential lifetimes); the prefill work is a
  compound Poisson sum of exponential prompts (Poisson-Gamma mixture, exact). Short requests
  see few prompts but each weighs on few steps: that is where the ITL tail is.
- TTFT = the API server's and engine's intake + the prompt's steps + a wait for a seat (batch or
  KV limit, whichever binds), the wait's tail from Erlang C over those seats.
- Output lengths are taken as geometric with the observed mean, prompts as exponential (only
  means are observed); the shares are averaged over the output lengths' quantiles.

`mode="stall"` is the server without chunked prefill (V0 prefill-first): a prompt's step holds
the whole batch, which is the same prefill work landing in the decodes' lives, so the same
formulas hold; they differ in the budget (a stall step is not split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..optimizer.domain import IterationParams

LENGTH_QUANTILES = 32  # points of the output-length distribution the shares are averaged over
PROMPT_QUANTILES = 6  # and of the request's own prompt length
HERMITE = np.polynomial.hermite_e.hermegauss(9)  # for the Gaussian batch average
MIN_IDENTIFYING_LOAD = 0.2  # share of a replica's time on token work below which the ITL says little of it
MAX_PROMPTS = 400  # terms of the Poisson mixture (prompts landing in one request's life)


@dataclass(frozen=True)
class EngineCosts:
    """vLLM's CPU costs beside the GPU profile (ms). The default is a prior from published
    vLLM measurements (Llama-3-8B on H100, vLLM 0.6, fitted over 49 statistics by
    benchmarks/published_vllm.py): an upper bound for V1, refined online per (model, GPU)."""

    step_ms: float = 0.0  # the fit puts no cost on the step itself ...
    seq_ms: float = 0.0193  # ... but this per sequence in a step
    request_ms: float = 0.0  # per request, in the step that starts it
    frontend_ms: float = 3.0  # per request in the API server, before the engine sees it


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


def _compound_poisson_cdf(x: np.ndarray, mean_count: np.ndarray, mean_size: float) -> np.ndarray:
    """P(sum of Poisson(mean_count) exponentials of mean `mean_size` <= x), elementwise.

    Sum of k exponentials <= x  <=>  a Poisson(x / size) count >= k; mixing over k gives
    1 - sum_k P(K = k) P(N(x/size) < k)."""
    shape = np.broadcast_shapes(np.shape(x), np.shape(mean_count))
    x = np.broadcast_to(np.maximum(x, 0.0), shape).ravel()
    mean_count = np.broadcast_to(mean_count, shape).ravel()
    most = float(mean_count.max(initial=0.0))
    terms = int(min(most + 10.0 * math.sqrt(most) + 12.0, MAX_PROMPTS))  # the Poisson's mass lies below
    k = np.arange(terms + 1)[:, None]
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, terms + 1)))))[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.maximum(mean_count, 1e-300)
        count_pmf = np.exp(k * np.log(m) - m - log_fact)
        z = np.maximum(x / mean_size, 1e-300)
        below = np.exp(k * np.log(z) - z - log_fact)  # P(N(z) = k)
    below_cdf = np.cumsum(below, axis=0) - below  # P(N(z) < k)
    return np.clip(1.0 - np.sum(count_pmf * below_cdf, axis=0), 0.0, 1.0).reshape(shape)


def _erlang_c(seats: int, offered: float) -> float:
    """Probability an arrival waits with `seats` servers at `offered` Erlangs (< seats)."""
    blocking = 1.0
    for k in range(1, seats + 1):
        blocking = offered * blocking / (k + offered * blocking)
    return blocking / (1.0 - offered / seats * (1.0 - blocking))


def _work_per_request(replica: Replica, shape: Shape) -> float:
    """GPU and engine ms one request adds beyond the steps' fixed cost."""
    p, c = replica.params, replica.costs
    prompt, out = max(shape.in_tokens, 0.0), max(shape.out_tokens, 1.0)
    decode = p.beta + p.gamma * (prompt + out) + c.seq_ms
    return replica.work_scale * (decode * (out - 1.0) + (p.beta + p.gamma) * prompt + c.request_ms + c.seq_ms)


def identify_work_scale(replica: Replica, shape: Shape, rate: float, mean_itl_ms: float) -> float | None:
    """The work scale under which the model's mean ITL equals a measured one at `rate`
    requests/s per replica (the ITL rises with the scale: bisection in log space). None where
    the window says little about it: light load, or an ITL the model cannot reach at any scale
    within [1/8, 8] (the measurement is off)."""
    if rate <= 0.0 or not math.isfinite(mean_itl_ms) or mean_itl_ms <= 0.0:
        return None
    if rate / 1000.0 * _work_per_request(replace(replica, work_scale=1.0), shape) < MIN_IDENTIFYING_LOAD:
        return None  # a replica mostly alone: its ITL is the fixed cost, the work hardly shows

    def itl(scale: float) -> float:
        return _mean_itl(replace(replica, work_scale=scale), shape, rate)

    low, high = 0.125, 8.0
    if not itl(low) <= mean_itl_ms <= itl(high):
        return None
    for _ in range(30):
        mid = math.sqrt(low * high)
        if itl(mid) < mean_itl_ms:
            low = mid
        else:
            high = mid
    return math.sqrt(low * high)


def _mean_itl(replica: Replica, shape: Shape, rate: float) -> float:
    """A request's mean gap between tokens: the mean step with itself in the batch (math.inf
    past saturation)."""
    p, c = replica.params, replica.costs
    prompt, out = max(shape.in_tokens, 0.0), max(shape.out_tokens, 1.0)
    rho = rate / 1000.0 * _work_per_request(replica, shape)
    if rho >= 1.0:
        return math.inf
    u = replica.work_scale * (p.beta + p.gamma * (prompt + out) + c.seq_ms)
    return (p.alpha + c.step_ms) / (1.0 - rho) + u


def predict(
    replica: Replica, shape: Shape, rate: float, ttft_slo_ms: float, itl_slo_ms: float, mode: str = "chunked"
) -> Prediction:
    """Attainment of one replica at `rate` requests/s of `shape`."""
    p, c = replica.params, replica.costs
    prompt, out = max(shape.in_tokens, 0.0), max(shape.out_tokens, 1.0)
    decodes = out - 1.0
    lam = rate / 1000.0  # per ms
    # a running request is length-biased: geometric outputs leave it about `out` tokens in
    w = replica.work_scale
    u = w * (p.beta + p.gamma * (prompt + out) + c.seq_ms)  # per decode per step
    prefill_work = w * ((p.beta + p.gamma) * prompt + c.request_ms + c.seq_ms)  # per request, once
    base = p.alpha + c.step_ms
    rho = lam * (u * decodes + prefill_work)
    if rho >= 1.0 or rate <= 0.0:
        stable = rate <= 0.0
        share = float(stable)
        return Prediction(share, share, share, share, base if stable else math.inf, 0.0, stable)
    step = base / (1.0 - rho)
    batch = lam * decodes * step
    seats = replica.max_batch
    if replica.kv_cache_tokens > 0:
        seats = min(seats, max(int(replica.kv_cache_tokens // (prompt + out)), 1))
    # ---- ITL: over the quantiles of the decode length and of the request's own prompt
    d = _lengths(out)[:, None]
    own_prompt = prompt * _exponential_quantiles(PROMPT_QUANTILES)[None, :]
    life = d * step
    tau = max(decodes * step, 1e-9)
    r = life / tau
    with np.errstate(divide="ignore", invalid="ignore"):
        var_avg = np.where(r > 1e-6, batch * 2.0 / r**2 * (r - 1.0 + np.exp(-r)), batch)
    # each running request reads its own context: the batch's work varies with who is in it
    var_avg = var_avg * (1.0 + (p.gamma**2 * (prompt**2 + out**2)) / u**2)
    # a request reads its own context every step, more than the mean's if its prompt is long
    own = d * p.gamma * (own_prompt + d / 2.0 - (prompt + out))
    budget = d * (itl_slo_ms - base) - own  # ms of work a request's life can hold within the SLO
    shares = np.zeros(np.broadcast_shapes(d.shape, own.shape))
    for node, weight in zip(*HERMITE, strict=True):
        others = np.maximum(batch + node * np.sqrt(var_avg), 0.0)
        room = budget - d * u * (1.0 + others)  # itself, and the others as Poisson arrivals see them
        shares += weight * _compound_poisson_cdf(room, lam * life, prefill_work)
    shares = np.where(d > 0, shares / math.sqrt(2.0 * math.pi), 1.0)  # one token: no gap to miss
    itl_share = float(shares.mean())
    itl_token_share = float((shares * d).sum() / max((d * np.ones_like(shares)).sum(), 1e-9))
    # ---- TTFT: intake, the prompt's steps, a wait for a seat
    chunk = replica.token_budget if mode == "chunked" else math.inf
    prompt_steps = max(math.ceil(prompt / max(chunk - batch, 1.0)), 1)
    ttft_work = c.frontend_ms + prompt_steps * step + prefill_work
    offered = lam * (decodes * step + ttft_work)
    if offered >= seats:
        ttft_share = 0.0
    else:
        waits = _erlang_c(seats, offered)
        slack = ttft_slo_ms - ttft_work
        hold = decodes * step + ttft_work
        ttft_share = 0.0 if slack < 0 else 1.0 - waits * math.exp(-(seats - offered) * slack / hold)
    return Prediction(itl_share * ttft_share, ttft_share, itl_share, itl_token_share, step, batch, True)


def capacity(replica: Replica, shape: Shape, ttft_slo_ms: float, itl_slo_ms: float, goal: float, mode: str = "chunked") -> float:
    """The largest rate (req/s) at which the predicted attainment reaches `goal` (0 if none)."""
    high = 1000.0 / max(_work_per_request(replica, shape), 1e-9)  # the rate that saturates the GPU
    low = 0.0
    if predict(replica, shape, high * 1e-4, ttft_slo_ms, itl_slo_ms, mode).attainment < goal:
        return 0.0
    for _ in range(40):
        mid = 0.5 * (low + high)
        if predict(replica, shape, mid, ttft_slo_ms, itl_slo_ms, mode).attainment >= goal:
            low = mid
        else:
            high = mid
        if high - low < 5e-3 * high:
            break
    return low
