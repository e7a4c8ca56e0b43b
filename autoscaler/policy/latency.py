"""SLO attainment of one continuously batching vLLM replica, and its capacity at a goal. Pure.

The optimizer's queueing model sizes mean latencies of a batch with no prefill in it; vLLM runs
other requests' prompts in the same steps as the decodes (V1 chunked prefill within a token
budget), and an SLO counts requests, so a replica's capacity at the SLO is set by the tail. This
model predicts the share of requests within both SLOs at a Poisson arrival rate:

- A step takes the longer of its GPU time, `alpha + beta * tokens + gamma * KV read` (the
  profile's perfParms; where the profile has a measured prefill line beside them, the longer of
  the two lines: _prompt_excess), and the engine's CPU time for it, per step, per sequence in the step and
  per new request (`EngineCosts`): vLLM processes a step's outputs while the next step runs
  (V1's asynchronous scheduling, V0's asynchronous output processing; ../shared/VLLM.md), as
  the simulator's server steps. Each side is a step of the same form (a fixed cost, a cost per
  decode, a cost per new request): the model predicts with each and keeps, at each rate, the
  side that meets fewer requests (the one whose steps are longer). Work conservation gives the
  mean step on a side: T = fixed / (1 - rho), rho the share of time spent on tokens and
  requests at the rate.
- One request's mean ITL over its d decode steps is alpha' + u * (batch averaged over its
  life) + (prefill work landing in its life) / d, the prompts that arrive during its steps but
  the last and during its own prefill step (vLLM admits a prompt in the step after it arrives,
  so those are prefilled in its first decode step). The batch average is the count's time average
  over the request's life (Gaussian, exponential lifetimes; an M/G/inf count whose variance and
  correlation time a larger batch's longer steps stretch); the prefill work is a compound
  Poisson sum of exponential prompts (the Poisson-Gamma mixture, summed exactly below
  EXACT_COUNT prompts, Sankaran's approximation above), with the variance of the busy period
  that prompts arriving during prefills add to. Short requests see few prompts but each weighs
  on few steps: that is where the ITL tail is.
- TTFT = the API server's and engine's intake + the prompt's steps + a wait for a seat (batch or
  KV limit, whichever binds), the wait's tail from Erlang C over those seats.
- Output lengths are taken as geometric with the observed mean, prompts as exponential (only
  means are observed); the shares are averaged over the output lengths' quantiles.
- A replica takes a Poisson share of the load (exact behind a router blind to load, such as
  kube-proxy's) unless the shape says a load-aware router balances it over a pool of N
  (`Shape.pool`: the fewest outstanding requests wins, as Knative's activator, Istio's
  LEAST_REQUEST and the Gateway API inference extension route). Then the replicas' batches are
  balanced: a replica's count varies 1/N as much, and so does the count of prompts landing in
  a request's life (their sizes vary as before: about half the variance of their work), of
  which about (N - 1) / 2N fewer come, the replica that has just taken a request being the last
  to take the next; the TTFT's wait for a seat is Erlang C over the pool's seats. That
  predicts a third to half of what such a fleet serves beyond one replica in the simulator
  (`benchmarks/latency_model.py --fleet`), below it for every ISVC measured.
- Everything is computed for arrays of points at once, each point a (replica, shape) row at a
  rate (predict_points; predict_rates is one row's): the capacity searches and the learning of
  all ISVCs cost a few numpy passes a cycle, not one per rate or per ISVC.

`mode="stall"` is the server without chunked prefill (V0 prefill-first): a prompt's step holds
the whole batch, which is the same prefill work landing in the decodes' lives, so the same
formulas hold; they differ in the budget (a stall step is not split).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from ..optimizer.domain import IterationParams, PrefillLine

LENGTH_QUANTILES = 32  # points of the output-length distribution the shares are averaged over
PROMPT_QUANTILES = 6  # and of the request's own prompt length
HERMITE = np.polynomial.hermite_e.hermegauss(9)  # for the Gaussian batch average
MIN_IDENTIFYING_LOAD = 0.2  # share of a replica's time on token work below which the ITL says little of it
EXACT_COUNT = 8.0  # mean prompts in one request's life below which their mixture is summed exactly
EXACT_TERMS = 48  # terms of that sum: Poisson(8) has no mass left past them
RATE_POINTS = 24  # rates per pass of the capacity search (two passes: 1/576 of the saturating rate)
# points per numpy pass of a prediction (predict_points): its arrays, points x output lengths x
# prompts x Hermite nodes, are then ~660 kB, within a core's cache; 64 points and more took 25-80%
# longer on benchmarks/plan_learning.py, 16 points 15% longer (numpy's cost per call)
BLOCK = 48
# nodes of the rates a varying load's requests arrive at (_rate_nodes): Gauss-Hermite, weights
# normalised to 1
RATE_NODES = 7
RATE_HERMITE = (lambda x, w: (x, w / w.sum()))(*np.polynomial.hermite_e.hermegauss(RATE_NODES))


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
    # the profile's measured prefill line, where it has one: a step's GPU time is then the
    # longer of the perfParms line and this one (a roofline: _prompt_excess)
    prefill: PrefillLine | None = None


@dataclass(frozen=True)
class Shape:
    in_tokens: float
    out_tokens: float
    # the squared coefficient of variation of the arrival rate over seconds, beyond Poisson
    # noise (0: Poisson at a steady rate; module doc, RATE_NODES)
    rate_cv2: float = 0.0
    # the replicas a load-aware router balances the load over (1: one replica, or a router blind
    # to load; module doc)
    pool: int = 1


@dataclass(frozen=True)
class Prediction:
    attainment: float  # share of requests within both SLOs
    ttft_share: float
    itl_share: float  # of requests, each by its mean gap, as the SLO and vLLM's TPOT histogram count them
    step_ms: float  # mean step
    batch: float  # mean running requests
    stable: bool


def _lengths(mean_out: np.ndarray) -> np.ndarray:
    """Decode steps (output tokens - 1) at evenly spaced quantiles of a geometric output length,
    one row per mean output length."""
    q = (np.arange(LENGTH_QUANTILES) + 0.5) / LENGTH_QUANTILES  # geometric: a discretised exponential
    p = 1.0 / np.maximum(np.asarray(mean_out, dtype=float), 1.0)[:, None]
    with np.errstate(divide="ignore"):  # p = 1 (one token) is taken by the where
        out = np.where(p < 1.0, np.ceil(np.log1p(-q) / np.log1p(-p)), 1.0)
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


def _compound_poisson_cdf(x: np.ndarray, mean_count: np.ndarray, mean_size: np.ndarray) -> np.ndarray:
    """P(sum of Poisson(mean_count) exponentials of mean `mean_size` <= x), elementwise.

    2 * sum / mean_size is a noncentral chi-square with 0 degrees of freedom and noncentrality
    2 * mean_count; from EXACT_COUNT prompts on, Sankaran's normal approximation of its square
    root holds to ~1e-3. Below, the Poisson mixture is summed exactly: a sum of k exponentials
    <= x  <=>  a Poisson(x / size) count >= k, so P = 1 - sum_k P(K = k) P(N(x/size) < k)."""
    shape = np.broadcast_shapes(np.shape(x), np.shape(mean_count), np.shape(mean_size))
    x = np.broadcast_to(np.maximum(x, 0.0), shape).ravel()
    m = np.broadcast_to(np.maximum(mean_count, 1e-300), shape).ravel()
    size = np.broadcast_to(mean_size, shape).ravel()
    # a prompt of no tokens (a mean read as 0) adds no work: the sum is 0, within any x; sized
    # at 1 below so that no division by zero happens, and set to certain at the end
    empty = ~(size > 0.0)
    size = np.where(empty, 1.0, size)
    result = np.empty(x.shape)
    large = m >= EXACT_COUNT
    ml, p = m[large], 1.0 / np.maximum(m[large], EXACT_COUNT)
    # Sankaran (1963) with h = 1/2, the value it takes at 0 degrees of freedom
    z = (np.sqrt(x[large] / (ml * size[large])) - (1.0 - 0.25 * p - 0.09375 * p * p)) / (
        0.5 * np.sqrt(2.0 * p) * (1.0 + 0.125 * p)
    )
    result[large] = _normal_cdf(z)
    # below: certain where the sum cannot reach x (beyond 10 standard deviations and more), the
    # chance of no prompt at all where x is 0, and summed term by term (no factorials, no array
    # of terms) in between
    small = ~large
    z_all = x / size
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
    result[empty] = 1.0
    return np.clip(result, 0.0, 1.0).reshape(shape)


def _erlang_c(seats: np.ndarray, offered: np.ndarray) -> np.ndarray:
    """Probability an arrival waits with `seats` servers at `offered` Erlangs (each < its seats),
    elementwise. Erlang B is a Poisson(offered) pmf at `seats` over its cdf there: summed in log
    space, all offered loads at once (the terms past each one's seats left out)."""
    k = np.arange(int(seats.max(initial=0)) + 1)[:, None]
    log_fact = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, k.size)))))[:, None]
    log_load = np.log(np.maximum(offered, 1e-300))[None, :]
    log_pmf = np.where(k <= seats, k * log_load - log_fact, -np.inf)  # e^-offered cancels in the ratio
    top = log_pmf.max(axis=0)
    at_seats = np.take_along_axis(log_pmf, seats[None, :], axis=0)[0]
    blocking = np.exp(at_seats - top) / np.sum(np.exp(log_pmf - top), axis=0)
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


def _prompt_excess(params: IterationParams, line: PrefillLine | None, prompt: float) -> float:
    """Mean ms a prompt costs beyond the perfParms line, its step being the longer of that line
    and the measured prefill line (a roofline: decode steps are memory-bound, prefills of more
    than a few hundred tokens compute-bound, where one beta fitted to both underrates them).
    Past the lines' crossing a prompt of t tokens costs (delta - beta) t - (alpha - gamma) more;
    averaged over exponential prompts (module doc) of mean m: (delta - beta) m e^(-knee / m).
    The decodes beside the prompt are left out (tens of tokens against its hundreds). No excess
    where the lines make no roofline: a prefill line above the decode steps' at no tokens (small
    prefills launch-bound, not compute-bound) or no steeper than it."""
    if line is None or prompt <= 0.0:
        return 0.0
    steeper, below = line.delta - params.beta, params.alpha - line.gamma
    if steeper <= 0.0 or below <= 0.0:
        return 0.0
    return steeper * prompt * math.exp(-below / (steeper * prompt))


def _gpu(replica: Replica, shape: Shape) -> _Side:
    # a running request is length-biased: geometric outputs leave it about `out` tokens in
    p, w = replica.params, replica.work_scale
    prompt, out = max(shape.in_tokens, 0.0), max(shape.out_tokens, 1.0)
    per_request = (p.beta + p.gamma) * prompt + _prompt_excess(p, replica.prefill, prompt)
    return _Side(p.alpha, w * (p.beta + p.gamma * (prompt + out)), w * per_request, p.gamma)


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
    return float(Rows.of([(replica, shape)]).saturating_rates()[0])


def _gap_decode(side: _Side, shape: Shape) -> float:
    """What the decodes add to a request's mean gap beyond the mean step: a decode's cost times
    the batch's variance over its mean, 1 / the pool a load-aware router balances it over."""
    return side.per_decode / max(shape.pool, 1)


def identify_work_scale(replica: Replica, shape: Shape, rate: float, mean_itl_ms: float) -> float | None:
    """The work scale w under which the model's mean ITL equals a measured one at `rate`
    requests/s per replica. The GPU's ITL is b / (1 - a w) + c w / N (b the fixed step cost, a w
    the share of time on work, c w a decode's cost, N the shape's pool): increasing in w below
    1 / a, so the smaller root of a c' w^2 - (I a + c') w + (I - b) = 0, c' = c / N, is the one.
    The mean step is b / (1 - a w) whatever the batch's law (steps of b each fill the time not
    spent on work), but a request's gaps are the steps weighted by the batch it is in: the mean
    step plus a decode's cost times the batch's variance over its mean, 1 for a Poisson share of
    the load and 1 / N for a batch a load-aware router balances over N replicas (the module
    doc). Read with N = 1 off a fleet, the gap a fleet's balance takes from the ITL was read as
    less work: mistral-7b on the simulated A100 at 0.55 req/s a replica measures 18.0, 17.0
    and 16.4 ms in fleets of 1, 2 and 4 (the formula: 17.8, 16.9 and 16.5), read as scales of
    1.03, 0.88 and 0.78 where its truth is its profile (1.03, 1.02 and 0.99 at their pools);
    at the mixed scenario's base load between its bursts, 0.72-0.80, and the replicas kept for
    its bursts were a third short (benchmarks/latency_model.py mean_itl). None where the window says
    little about it: light load, a replica whose engine CPU is the longer in some part of a
    step, or one the model cannot reach at any scale within [1/8, 8] (the measurement is off).
    Where the CPU is the longer in a part (code-1b's: per step and per sequence, its GPU per
    prompt), the steps alternate between the two sides, a decode-only step the CPU's and a
    prompt's the GPU's: the mean ITL is the mean of each step's longer side, above the longer of
    the two sides' means that the model prices, and solving the GPU's formula against it reads
    the CPU's time as GPU work. code-1b on the simulated H100 at 20, 40 and 74 req/s: 4.7, 5.9
    and 10.0 ms measured, the model's 4.0, 4.1 (the CPU side's) and 6.2 (the GPU's), scales of
    3.2, 1.8 and 1.15 read where its truth is its profile; at the mixed scenario's 20-40 req/s
    the learner's steps took it to 1.5, and its replica to 37 req/s from the profile's 52."""
    if rate <= 0.0 or not math.isfinite(mean_itl_ms) or mean_itl_ms <= 0.0:
        return None
    unscaled = replace(replica, work_scale=1.0)
    gpu = _gpu(unscaled, shape)
    if _sides(unscaled, shape) != [gpu]:
        return None  # the engine's CPU sets some steps: the ITL is not the GPU's alone
    a = rate / 1000.0 * gpu.work(shape)
    if a < MIN_IDENTIFYING_LOAD:
        return None  # a replica mostly alone: its ITL is the fixed cost, the work hardly shows
    if _side_itl(_cpu(replica), shape, rate) >= mean_itl_ms:
        return None  # the engine's CPU sets the steps
    b, c = gpu.fixed, _gap_decode(gpu, shape)
    if mean_itl_ms <= b:
        return None  # faster than a step with nothing in it
    root = 2.0 * (mean_itl_ms - b) / (mean_itl_ms * a + c + math.sqrt((mean_itl_ms * a - c) ** 2 + 4.0 * a * b * c))
    return root if 0.125 <= root <= 8.0 else None


def _side_itl(side: _Side, shape: Shape, rate: float) -> float:
    """The mean ITL one side's steps give (identify_work_scale inverts the GPU's)."""
    rho = rate / 1000.0 * side.work(shape)
    return math.inf if rho >= 1.0 else side.fixed / (1.0 - rho) + _gap_decode(side, shape)


@dataclass(frozen=True)
class Predictions:
    """Prediction's fields over an array of rates."""

    attainment: np.ndarray
    ttft_share: np.ndarray
    itl_share: np.ndarray
    step_ms: np.ndarray
    batch: np.ndarray
    stable: np.ndarray

    def at(self, i: int) -> Prediction:
        return Prediction(*(getattr(self, f.name)[i].item() for f in fields(self)))


@dataclass(frozen=True)
class Rows:
    """(replica, shape) pairs side by side, as what a prediction needs of each (one array entry
    per pair): the rates of many ISVCs are predicted in one numpy pass, and one ISVC's are the
    same computation over one row. The step's costs are those of the side that may set the step
    (module doc); where either may, the other side's are beside them (`two`)."""

    base: np.ndarray  # a step's fixed cost (ms)
    u: np.ndarray  # work per decode per step (ms)
    prefill_work: np.ndarray  # work per request, once (ms)
    gamma: np.ndarray  # cost per token of context read (ms; the GPU side's)
    frontend_ms: np.ndarray
    prompt: np.ndarray
    out: np.ndarray
    seats: np.ndarray  # int: the batch or the KV limit, whichever binds
    token_budget: np.ndarray
    two: np.ndarray  # bool: the other side may set the step too
    other_base: np.ndarray
    other_u: np.ndarray
    other_prefill_work: np.ndarray
    other_gamma: np.ndarray
    rate_cv2: np.ndarray  # Shape.rate_cv2
    pool: np.ndarray  # Shape.pool

    @classmethod
    def of(cls, pairs: Sequence[tuple[Replica, Shape]]) -> Rows:
        columns = list(zip(*(_row(replica, shape) for replica, shape in pairs), strict=True)) or [()] * len(fields(cls))
        types = {"seats": int, "two": bool, "pool": int}
        return cls(*(np.array(c, dtype=types.get(f.name, float)) for f, c in zip(fields(cls), columns, strict=True)))

    def take(self, index: np.ndarray | slice) -> Rows:
        return Rows(*(getattr(self, f.name)[index] for f in fields(self)))

    def saturating_rates(self) -> np.ndarray:
        """saturating_rate() of each row: the rate at which its busier side (_Side.work) would
        do nothing but this work."""
        decodes = self.out - 1.0
        work = np.maximum(self.u * decodes + self.prefill_work, self.other_u * decodes + self.other_prefill_work)
        return 1000.0 / np.maximum(work, 1e-9)

    def other_side(self) -> Rows:
        return replace(self, base=self.other_base, u=self.other_u, prefill_work=self.other_prefill_work, gamma=self.other_gamma)


def _row(replica: Replica, shape: Shape) -> tuple:
    """Rows' fields for one pair (in their order)."""
    prompt, out = max(shape.in_tokens, 0.0), max(shape.out_tokens, 1.0)
    seats = replica.max_batch
    if replica.kv_cache_tokens > 0:
        seats = min(seats, max(int(replica.kv_cache_tokens // (prompt + out)), 1))
    sides = _sides(replica, shape)
    first, other = sides[0], sides[-1]
    return (
        *(first.fixed, first.per_decode, first.per_request, first.kv_read),
        *(replica.costs.frontend_ms, prompt, out, seats, replica.token_budget, len(sides) == 2),
        *(other.fixed, other.per_decode, other.per_request, other.kv_read),
        max(shape.rate_cv2, 0.0),
        max(shape.pool, 1),
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
    """Attainment of one replica at each of `rates` (requests/s) of `shape`, in one pass; the
    SLOs may be arrays beside the rates (one pair per rate)."""
    rates = np.asarray(rates, dtype=float)
    rows = Rows.of([(replica, shape)]).take(np.zeros(rates.shape, dtype=int))
    ttft, itl = (np.broadcast_to(np.asarray(v, dtype=float), rates.shape) for v in (ttft_slo_ms, itl_slo_ms))
    return predict_points(rows, rates, ttft, itl, mode)


def predict_points(
    rows: Rows, rates: np.ndarray, ttft_slo_ms: np.ndarray, itl_slo_ms: np.ndarray, mode: str = "chunked"
) -> Predictions:
    """Attainment of each row at the mean rate and SLOs beside it (arrays of one length). Where
    the rate varies over seconds (rate_cv2 > 0) each request is served at the rate of its
    moment: the shares are their mean over the rates its requests arrive at (_rate_nodes), the
    mean step and batch those of the mean rate."""
    steady = _predict_steady(rows, rates, ttft_slo_ms, itl_slo_ms, mode)
    varying = np.flatnonzero(rows.rate_cv2 > 0.0)
    if not varying.size:
        return steady
    nodes, weights = _rate_nodes(rows.rate_cv2[varying])  # points x RATE_NODES
    each = np.repeat(varying, RATE_NODES)
    at = _predict_steady(rows.take(each), (rates[varying, None] * nodes).ravel(), ttft_slo_ms[each], itl_slo_ms[each], mode)
    shares = {}
    for name in ("ttft_share", "itl_share", "attainment"):
        values = getattr(steady, name).copy()
        values[varying] = np.sum(getattr(at, name).reshape(-1, RATE_NODES) * weights, axis=1)
        shares[name] = values
    return replace(steady, **shares)


def _rate_nodes(cv2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rates, over the mean rate, that the requests of a load whose rate varies with squared
    coefficient of variation `cv2` arrive at, and their weights (RATE_NODES per load). A request
    is likelier to arrive while the rate is high: the rates it sees are the rate's distribution
    weighted by the rate itself, of mean 1 + cv2 and squared coefficient of variation
    cv2 / (1 + cv2) for a Gamma-distributed rate (the mixing law of a negative binomial count);
    taken as log-normal with those two moments, at Gauss-Hermite nodes."""
    cv2 = np.asarray(cv2, dtype=float)[:, None]
    sigma2 = np.log1p(cv2 / (1.0 + cv2))
    nodes, weights = RATE_HERMITE
    return (1.0 + cv2) * np.exp(np.sqrt(sigma2) * nodes - sigma2 / 2.0), np.broadcast_to(weights, (cv2.shape[0], RATE_NODES))


def _predict_steady(
    rows: Rows, rates: np.ndarray, ttft_slo_ms: np.ndarray, itl_slo_ms: np.ndarray, mode: str = "chunked"
) -> Predictions:
    """predict_points at steady Poisson rates; where either side may set the step, the side that
    meets fewer requests there (the one whose steps are longer)."""
    first = _predict_blocks(rows, rates, ttft_slo_ms, itl_slo_ms, mode)
    two = np.flatnonzero(rows.two)
    if not two.size:
        return first
    other = _predict_blocks(rows.take(two).other_side(), rates[two], ttft_slo_ms[two], itl_slo_ms[two], mode)
    worse = other.attainment < first.attainment[two]
    merged = []
    for f in fields(Predictions):
        values = getattr(first, f.name).copy()
        values[two] = np.where(worse, getattr(other, f.name), values[two])
        merged.append(values)
    return Predictions(*merged)


def _predict_blocks(rows: Rows, rates: np.ndarray, ttft_slo_ms: np.ndarray, itl_slo_ms: np.ndarray, mode: str) -> Predictions:
    """predict_points on the rows' first side, BLOCK points per numpy pass: a pass's arrays are
    points x quantiles x Hermite nodes, which past a few hundred kB leave the CPU's cache and
    cost more per point than the passes save."""
    blocks = [
        _predict_block(
            rows.take(slice(i, i + BLOCK)), rates[i : i + BLOCK], ttft_slo_ms[i : i + BLOCK], itl_slo_ms[i : i + BLOCK], mode
        )
        for i in range(0, max(len(rates), 1), BLOCK)
    ]
    return Predictions(*(np.concatenate([getattr(b, f.name) for b in blocks]) for f in fields(Predictions)))


def _predict_block(rows: Rows, rates: np.ndarray, ttft_slo_ms: np.ndarray, itl_slo_ms: np.ndarray, mode: str) -> Predictions:
    """predict_points over one block: every array has a point on its leading axis."""
    u, prefill_work, base, gamma, prompt, out = rows.u, rows.prefill_work, rows.base, rows.gamma, rows.prompt, rows.out
    decodes = out - 1.0
    rho = rates / 1000.0 * (u * decodes + prefill_work)
    idle, stable = rates <= 0.0, (rho < 1.0) & (rates > 0.0)
    lam = np.where(stable, rates, 0.0) / 1000.0  # per ms; the unstable are overwritten below
    step = base / (1.0 - np.where(stable, rho, 0.0))
    batch = lam * decodes * step
    seats = rows.seats
    # ---- ITL: over the points, the quantiles of the decode length and of the request's own prompt
    d = _lengths(out)[:, :, None]
    per_point = (slice(None), None, None)
    prompt_quantiles = _exponential_quantiles(PROMPT_QUANTILES)[None, None, :]  # the request's own prompt
    own_prompt = prompt[per_point] * prompt_quantiles
    life = d * step[per_point]
    # the batch is not M/G/inf: a larger batch makes every step longer, so more requests arrive
    # per step while the batch drains no faster. Linearised about the mean, the count's
    # variance and its correlation time both grow by (1 - sigma) / (1 - rho), sigma the share of
    # time on prefills (arrivals' work that does not stay in the batch)
    sigma = np.minimum(lam * prefill_work, np.where(stable, rho, 0.0))
    amp = (1.0 - sigma) / np.maximum(1.0 - np.where(stable, rho, 0.0), 1e-9)
    tau = np.maximum(decodes * step * amp, 1e-9)[per_point]
    r = life / tau
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        var_avg = (batch * amp)[per_point] * np.where(r > 1e-6, 2.0 / r**2 * (r - 1.0 + np.exp(-r)), 1.0)
    # each running request reads its own context: the batch's work varies with who is in it; a
    # load-aware router balances the count over its pool, not who is in it (module doc)
    var_avg = (
        var_avg * (1.0 / rows.pool + (gamma**2 * (prompt**2 + out**2)) / np.maximum(u, 1e-12) ** 2)[per_point]
    )  # u 0: no CPU per sequence
    # a request reads its own context every step, more than the mean's if its prompt is long
    own = d * gamma[per_point] * (own_prompt + d / 2.0 - (prompt + out)[per_point])
    with np.errstate(invalid="ignore"):  # 0 x inf for a one-token output under no ITL SLO: set to 1 below
        budget = d * (itl_slo_ms - base)[per_point] - own  # ms of work a request's life can hold within the SLO
    # mean prompts landing in a request's life: those arriving during its d steps but the last
    # (prefilled after it), and during its own prefill step (admitted in its first decode step),
    # which its own prompt's work lengthens: a long prompt's short request sees the most
    own_work = prefill_work[per_point] * prompt_quantiles
    arriving = lam[per_point] * (life + own_work)
    # behind a load-aware router the replica that has just taken this request is the last to take
    # the next: about (pool - 1) / 2 of the fleet's next arrivals go elsewhere first
    arriving = np.maximum(arriving - ((1.0 - 1.0 / rows.pool) / 2.0)[per_point], 0.0)
    # the Gaussian's nodes on a leading axis: others running beside the request, as Poisson arrivals see them
    nodes, weights = (v[:, None, None, None] for v in HERMITE)
    others = np.maximum(batch[per_point] + nodes * np.sqrt(var_avg), 0.0)
    room = budget - d * u[per_point] * (1.0 + others)  # itself and the others
    # prompts that arrive while prefills run land in the life too (they stretch it): the work
    # is an M/G/1 delay busy period, whose variance is the fixed life's over (1 - sigma)^2. The
    # same mean and that variance: fewer, larger lumps (clusters of prompts). Behind a load-aware
    # router the count varies 1/pool as much, its exponential sizes as before: of the compound
    # sum's variance (half count, half size), (1 + 1/pool) / 2 is left
    cluster = ((1.0 + 1.0 / rows.pool) / 2.0 / np.maximum(1.0 - sigma, 1e-9) ** 2)[per_point]
    shares = np.sum(weights * _compound_poisson_cdf(room, arriving / cluster, prefill_work[per_point] * cluster), axis=0)
    shares = np.where(d > 0, shares / math.sqrt(2.0 * math.pi), 1.0)  # one token: no gap to miss
    itl_share = shares.mean(axis=(1, 2))
    # ---- TTFT: intake, the prompt's steps, a wait for a seat
    chunk = rows.token_budget if mode == "chunked" else math.inf
    prompt_steps = np.maximum(np.ceil(prompt / np.maximum(chunk - batch, 1.0)), 1.0)
    ttft_work = rows.frontend_ms + prompt_steps * step + prefill_work
    offered = lam * (decodes * step + ttft_work)
    seated = offered < seats
    # the pool's seats serve the pool's arrivals (one replica's alone behind a router blind to load)
    waits = _erlang_c(seats * rows.pool, np.where(seated, offered * rows.pool, 0.0))
    slack = ttft_slo_ms - ttft_work
    hold = decodes * step + ttft_work
    with np.errstate(over="ignore", invalid="ignore"):
        ttft_share = np.where(
            seated & (slack >= 0.0), 1.0 - waits * np.exp(-(seats - offered) * rows.pool * np.maximum(slack, 0.0) / hold), 0.0
        )
    # no load meets everything; past saturation nothing is met
    ttft_share, itl_share = (np.where(idle, 1.0, np.where(stable, v, 0.0)) for v in (ttft_share, itl_share))
    step = np.where(idle, base, np.where(stable, step, math.inf))
    return Predictions(itl_share * ttft_share, ttft_share, itl_share, step, np.where(stable, batch, 0.0), stable | idle)


def capacity(replica: Replica, shape: Shape, ttft_slo_ms: float, itl_slo_ms: float, goal: float, mode: str = "chunked") -> float:
    """The largest rate (req/s) at which the predicted attainment reaches `goal` (0 if none)."""
    return float(capacities([(replica, shape)], np.array([ttft_slo_ms]), np.array([itl_slo_ms]), goal, mode)[0])


def capacities(
    pairs: Sequence[tuple[Replica, Shape]], ttft_slo_ms: np.ndarray, itl_slo_ms: np.ndarray, goal: float, mode: str = "chunked"
) -> np.ndarray:
    """capacity() of each (replica, shape) pair at the SLOs beside it. Attainment falls with the
    rate, so: a first point at 1e-4 of the saturating rate (missed there: no capacity), then two
    passes over RATE_POINTS evenly spaced rates, the second inside the bracket the first found,
    and a linear interpolation inside the second's. A pass bisects its rates for the last one
    that meets the goal (5 predictions, not 24): its steps are sequential, so each is one numpy
    pass over every pair at once, where one pair's would be mostly numpy's per-call cost."""
    rows = Rows.of(pairs)
    ttft, itl = (np.asarray(v, dtype=float) for v in (ttft_slo_ms, itl_slo_ms))
    result = np.zeros(len(pairs))
    high = rows.saturating_rates()
    searched = np.flatnonzero(predict_points(rows, high * 1e-4, ttft, itl, mode).attainment >= goal)
    rows, ttft, itl, high = rows.take(searched), ttft[searched], itl[searched], high[searched]
    low = np.zeros(searched.size)
    for _ in range(2):
        # the pass's rates are low + (high - low) * (i + 1) / (RATE_POINTS + 1), i < RATE_POINTS;
        # i = -1 (low) meets the goal, i = RATE_POINTS (high) does not, each with a share to
        # interpolate between (1 and 0 where it was not predicted)
        met_i, missed_i = np.full(searched.size, -1), np.full(searched.size, RATE_POINTS)
        met_share, missed_share = np.ones(searched.size), np.zeros(searched.size)
        while (open_ := np.flatnonzero(missed_i - met_i > 1)).size:
            i = (met_i[open_] + missed_i[open_]) // 2
            rates = low[open_] + (high - low)[open_] * (i + 1) / (RATE_POINTS + 1)
            shares = predict_points(rows.take(open_), rates, ttft[open_], itl[open_], mode).attainment
            met = shares >= goal
            met_i[open_], missed_i[open_] = np.where(met, i, met_i[open_]), np.where(met, missed_i[open_], i)
            met_share[open_] = np.where(met, shares, met_share[open_])
            missed_share[open_] = np.where(met, missed_share[open_], shares)
        low, high = (
            np.where(met_i >= 0, low + (high - low) * (met_i + 1) / (RATE_POINTS + 1), low),
            np.where(missed_i < RATE_POINTS, low + (high - low) * (missed_i + 1) / (RATE_POINTS + 1), high),
        )
    # attainment is near linear over 1/576 of the saturating rate
    result[searched] = low + (high - low) * (met_share - goal) / np.maximum(met_share - missed_share, 1e-12)
    return result
