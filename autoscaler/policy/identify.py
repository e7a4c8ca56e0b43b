"""Online identification of a vLLM step's costs for a (model, GPU) with no profile. Pure.

A step costs `alpha + u * decodes + c * prompt tokens` (u = beta + gamma * context, c = beta +
gamma: the latency model's perfParms). Over a window in which the engine is busy, its steps
fill the time: steps/s x alpha + decodes/s x u + c x prompt tokens/s = 1. Steps/s is 1 / S,
S the plain mean step; decodes/s is B / I, I vLLM's mean ITL (the decode-weighted mean step)
and B the mean decoding requests per replica (Little's law), so, exactly,

    I (1 - c P) = alpha (I / S) + u B        (P prompt tokens per ms per replica)

The line's intercept is alpha (I / S), read as alpha: I / S is 1 within noise (a step with
more decodes is longer and weighs more in I, one with a long prompt's chunk is longer and
carries fewer; vLLM's step count, vllm:iteration_tokens_total's, reads it at 0.94-1.07 in the
busy simulated windows, and reading each window's did not pay: docs/notes/no-profile.md).
An intercept of alpha + u, read as if each request saw itself beside the B others, overrated
granite-13b by 11% and mistral-7b by 22% in the simulated world.

Each window gives a point from what vLLM exports and Prometheus keeps:
- I: the ITL histogram's sum over its count (vllm:inter_token_latency_seconds);
- B: by Little's law, the decode time the window's requests spent (the same histogram's sum)
  over the window and the replicas: the mean running decodes, without sampling a gauge;
- P: vllm:prompt_tokens_total's increase over the window and the replicas;
- c: from the TTFT (vllm:time_to_first_token_seconds' mean): the API server's intake, half a
  step's wait for the running step, the prompt's steps (each a mean step), then its own
  prefill work c x prompt; read at the lightest loads, as a prompt's wait behind the others'
  chunks, more the busier the replica, reads as cost too.
alpha and u are the line through (B (context - 1), I (1 - c P) - c B) across windows at
different loads (u = c + gamma (context - 1)), at the windows' median context and at each one's,
the slower decode kept (fit): Siegel's repeated median of pairwise slopes (robust to nearly half
the windows being outliers) over windows whose loads differ by SPREAD, read once the busiest
window's batch costs MIN_IDENTIFYING_LOAD of its step at its slope's one-sided 95% bound
(SLOPE_DEVIATIONS standard errors: a slope read low off a few windows at loads close together
overrates the replica). Below that, a GPU's cost per token is still memory-bound and
grows to compute-bound with the batch, so the slope alone would overrate the replica: a line
of light loads (rising across them by RISE_DEVIATIONS times the windows' noise: their scatter
about the line, once there are MIN_SCATTER_POINTS of them, else NOISE of the step) is read
conservatively, its slope as the KV read alone and every token charged the compute-bound cost
the TTFT shows besides (a decode costs c + u). Light loads too close together for a line, or
whose line does not rise beyond that noise, are read the same way with the slope at its
one-sided bound (Theil and Sen's, plus SLOPE_DEVIATIONS standard errors), where at that slope
the batch still costs less than MIN_IDENTIFYING_LOAD of the step: a replica whose capacity is
mostly prefills is then sized from the prefill cost the TTFT measures, not the prior's. Before
the windows get there, one factor on the whole prior step is fitted (the median over windows of
the factor that makes the prior's mean step equal the measured ITL): the prior's per-token
costs are further above the truth than its fixed cost (prior.py), so at a higher load the
scaled prior predicts a slower step than the real one, and the capacity it gives stays below
the real one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..optimizer.domain import IterationParams
from .latency import MIN_IDENTIFYING_LOAD

SPREAD = 0.3  # loads (decoding requests per replica) differ by this share of the largest: a slope
# a light-load line rises across the loads by this many deviations of a window's noise: the
# robust deviation of the windows' scatter about the line where there are enough of them to
# measure it, else a share of the step (a minute's mean ITL averages thousands of gaps: ~1%).
# An assumed 5% left chat-8b's line on an H100 flat (diurnal fall, seeds 2 and 3: 7 windows at
# 1.9-6.7 decoding requests rising 0.35 ms, 4.8% of its 7.2 ms step, each within 0.02 ms of it)
RISE_DEVIATIONS, NOISE, MIN_SCATTER_POINTS = 5.0, 0.01, 5
# a line's slope is read at this many of its standard errors above (the one-sided 95% bound):
# the windows' noise over the loads' spread, sqrt(sum (x - mean x)^2), as for a least-squares line
SLOPE_DEVIATIONS = 1.645
SCALED_PRIOR, LIGHT_LOAD_LINE, LINE = "scaled prior", "light-load line", "line"  # how the costs were read (fit)
MAX_POINTS = 30  # windows kept (30 minutes at a window a minute): an engine upgrade ages out
FLOOR = 1.0 / 64.0  # a fitted cost at least this share of the prior's (and at most the prior's twice)


@dataclass(frozen=True)
class Point:
    """One window of one replica's busy engine (ms, tokens)."""

    itl_ms: float  # mean step
    decodes: float  # mean decoding requests per replica
    prompt_per_ms: float  # prompt tokens per ms per replica
    prefill_ms_per_token: float | None  # from the TTFT; None where the window cannot tell
    context: float  # a running request's mean context (prompt + output)


@dataclass
class Identification:
    """The step costs of one (model, GPU) as measured so far, from a prior (prior.py)."""

    prior: IterationParams
    points: list[Point] = field(default_factory=list)
    params: IterationParams | None = None  # None: the prior stands
    reading: str = SCALED_PRIOR  # how params were read (fit)
    kv_cache_tokens: int | None = None  # a replica's, as vLLM reports it (else the prior's bound)

    @property
    def current(self) -> IterationParams:
        return self.params or self.prior

    @property
    def identifying(self) -> bool:
        """Whether the costs are still to be read off the line (a light-load line's or the scaled
        prior's are conservative stand-ins: more windows at other loads are wanted)."""
        return self.reading != LINE

    def reported_cache(self, kv_cache_tokens: int, prior: IterationParams) -> None:
        """vLLM reported a replica's KV cache: it replaces the bound, with the prior it gives
        (prior.py: a token's bytes bounded by it), which the windows so far are refitted to."""
        self.kv_cache_tokens, self.prior = kv_cache_tokens, prior
        if self.points:
            self.params, self.reading = fit(self.prior, self.points)

    def learn(self, point: Point) -> None:
        if not all(math.isfinite(v) and v >= 0.0 for v in (point.itl_ms, point.decodes, point.prompt_per_ms, point.context)):
            return
        if point.itl_ms <= 0.0:
            return  # no step takes no time: a histogram summing to 0 would scale the prior to nothing
        self.points = [*self.points[-(MAX_POINTS - 1) :], point]
        self.params, self.reading = fit(self.prior, self.points)


def point(
    itl_ms: float,
    gaps: float,
    ttft_ms: float | None,
    prompt: float,
    out: float,
    prompt_per_s: float,
    window_s: float,
    replicas: int,
    frontend_ms: float,
) -> Point:
    """The window's point from vLLM's figures (module doc): `gaps` the ITL histogram's count,
    `prompt` and `out` the mean request, `prompt_per_s` the ISVC's prompt tokens prefilled per
    second (the counter's rate: the work done in the window, which the mean prompt times the
    arrivals is not while a queue builds), `replicas` serving it throughout."""
    decodes = itl_ms / 1000.0 * gaps / window_s / replicas
    prefill = None
    if ttft_ms is not None and prompt >= 1.0:
        prefill = (ttft_ms - frontend_ms - 1.5 * itl_ms) / prompt  # intake, half a step's wait, its own step
        prefill = prefill if prefill > 0.0 else None
    return Point(itl_ms, decodes, prompt_per_s / replicas / 1000.0, prefill, prompt + out)


def fit(prior: IterationParams, points: list[Point]) -> tuple[IterationParams, str]:
    """The step costs the points say (module doc), and how they were read: off the line, off a
    line of light loads (conservatively), or the prior scaled."""
    itl = np.array([p.itl_ms for p in points])
    decodes = np.array([p.decodes for p in points])
    prompt = np.array([p.prompt_per_ms for p in points])
    contexts = np.array([p.context for p in points])
    context = float(np.median(contexts))
    prefills = _lightest_prefills(points, decodes)
    if prefills and len(points) >= 3:
        c = float(np.median(prefills))
        decoding = itl * (1.0 - np.minimum(c * prompt, 0.9))  # the step less its prompts' share
        y = decoding - c * decodes
        if np.ptp(decodes) >= SPREAD * decodes.max():
            # u = beta + gamma x context = c + gamma x (context - 1), so y - c B = alpha (I / S) +
            # gamma x B (context - 1): a line in the KV tokens the decodes read per step, at the
            # windows' median context or at each window's own. Each one's: where the busier
            # windows' requests are shorter (mistral-7b on the L40S under the diurnal load: 1,280
            # tokens at 12-16 decoding requests, 1,440-1,520 at 2-5) the median's slope is
            # flattened (its decode cost read 16% low, the replica 8% overrated). But the context
            # a window reports is its finished requests' mean prompt plus output, not the mean
            # its decodes read (where short outputs come with long prompts, the long prompts are
            # read for few steps), so each window's is noisier: the two are read and the slower
            # decode kept, conservative by construction
            readings = [decodes * np.maximum(read - 1.0, 1.0) for read in (np.full_like(contexts, context), contexts)]
            (alpha, gamma, scatter), x = max(((_line(read, y), read) for read in readings), key=lambda line: line[0][1])
            noise = scatter if len(points) >= MIN_SCATTER_POINTS else NOISE * float(np.median(decoding))
            u = c + gamma * max(context - 1.0, 1.0)
            if u > 0.0 and alpha > 0.0:
                if not _light(alpha, u, float(decodes.max())):
                    # a slope read off a few windows at loads close together is known only to its
                    # standard error, and one read low overrates the replica: read at its one-sided
                    # bound (mistral-7b on the L40S, steady load: 7 windows at 9.4-16 decoding
                    # requests, the busiest 12% faster than the truth, read the replica 22% over)
                    gamma += SLOPE_DEVIATIONS * _slope_error(noise, x)
                    alpha = float(np.median(y - gamma * x))
                    return _bounded(prior, alpha, c + gamma * max(context - 1.0, 1.0), c, context), LINE
                # at lighter loads a GPU's cost per token is still memory-bound and grows to
                # compute-bound with the batch, so the slope alone would overrate the replica at
                # the load it is sized for: read the slope as the KV read alone and charge every
                # token the compute-bound cost the TTFT shows besides (a decode costs c + u: no
                # less than at any load), once the line rises across the loads by well more than
                # the windows' noise
                if u * np.ptp(decodes) >= RISE_DEVIATIONS * noise:
                    return _bounded(prior, alpha, u + c, c, context), LIGHT_LOAD_LINE
        if len(points) >= MIN_SCATTER_POINTS:
            # loads too close together for a line, or one that does not rise beyond the windows'
            # noise: the noise still bounds the slope, read at its one-sided bound as a light-load
            # line, while the batch at that slope is light (code-1b on an H100 under a steady
            # load: one replica at 2.3-3.0 decoding requests, its step flat within 1%, 79% of its
            # time at capacity in prefills the TTFT measures, read at a third of its capacity off
            # the scaled prior, two thirds off this)
            x = decodes * max(context - 1.0, 1.0)
            gamma = _upper_slope(x, y)
            alpha = float(np.median(y - gamma * x)) if math.isfinite(gamma) else 0.0
            u = c + gamma * max(context - 1.0, 1.0)
            if alpha > 0.0 and _light(alpha, u, float(decodes.max())):
                return _bounded(prior, alpha, u + c, c, context), LIGHT_LOAD_LINE
    u0 = prior.beta + prior.gamma * context
    c0 = prior.beta + prior.gamma
    # within the line's floor (_bounded): outlying windows must not scale the prior to nothing
    scale = max(float(np.median(itl / (prior.alpha + u0 * decodes + itl * c0 * prompt))), FLOOR)
    return IterationParams(prior.alpha * scale, prior.beta * scale, prior.gamma * scale), SCALED_PRIOR


def _light(alpha: float, u: float, decodes: float) -> bool:
    """Whether a batch of `decodes` at u apiece costs under MIN_IDENTIFYING_LOAD of the step."""
    batch_cost = u * decodes
    return batch_cost < MIN_IDENTIFYING_LOAD * (alpha + batch_cost)


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(intercept, slope, scatter) of y over x by Siegel's repeated median: each point's median
    slope to the others far enough apart, then the median of those (robust to nearly half the
    points being outliers); the intercept the median of what the slope leaves; the scatter the
    residuals' robust deviation (1.4826 x their median absolute value: a normal's standard
    deviation). No slope where none are apart."""
    apart = np.abs(x[:, None] - x[None, :]) >= SPREAD / 2.0 * x.max()
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.where(apart, (y[:, None] - y[None, :]) / (x[:, None] - x[None, :]), np.nan)
    rows = [np.median(row[~np.isnan(row)]) for row in slopes if not np.isnan(row).all()]
    slope = float(np.median(rows)) if rows else 0.0
    # no + 1 for the request itself: B (Little's law) counts every decoding request already, and
    # the identity is exact with alpha x (I / mean step) in place of alpha (module doc), 1 within
    # noise
    intercept, scatter = _around(x, y, slope)
    return intercept, slope, scatter


def _upper_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The slope of y over x at its one-sided bound: Theil and Sen's median of the pairwise
    slopes (robust to outliers; 0 where it falls), plus SLOPE_DEVIATIONS standard errors of the
    residuals' robust deviation (_slope_error); inf where the loads do not differ."""
    dx, dy = x[:, None] - x[None, :], y[:, None] - y[None, :]
    upper = np.triu(np.abs(dx) > 1e-12 * max(float(np.abs(x).max()), 1e-300), k=1)
    slope = max(float(np.median(dy[upper] / dx[upper])), 0.0) if upper.any() else 0.0
    return slope + SLOPE_DEVIATIONS * _slope_error(_around(x, y, slope)[1], x)


def _around(x: np.ndarray, y: np.ndarray, slope: float) -> tuple[float, float]:
    """(intercept, scatter) of y about a line of `slope` over x: the median of what the slope
    leaves, and the residuals' robust deviation (1.4826 x their median absolute value: a
    normal's standard deviation)."""
    left = y - slope * x
    intercept = float(np.median(left))
    return intercept, 1.4826 * float(np.median(np.abs(left - intercept)))


def _slope_error(noise: float, x: np.ndarray) -> float:
    """A line's slope's standard error from its points' noise: the noise over the loads' spread,
    sqrt(sum (x - mean x)^2), as for a least-squares line; inf where the loads do not differ
    (they bound no slope)."""
    spread = float(np.sqrt(np.sum((x - x.mean()) ** 2)))
    if spread <= 1e-9 * max(float(np.abs(x).max()), 1e-300):
        return math.inf
    return noise / spread


def _lightest_prefills(points: list[Point], decodes: np.ndarray) -> list[float]:
    """A prompt token's cost as the TTFT shows it at the lightest loads: a prompt waits behind
    the others' chunks within the token budget, more the busier the replica, and the TTFT's
    reading counts that wait as cost (chat-8b on an H100: 0.020 ms a token at 4 decoding
    requests, 0.029 at 38). Overrated, it takes from each busy window's step the time its
    prompts' queue took, which flattens the line: the windows within the line's spread of the
    lightest load, whose reading that wait inflates least."""
    light = decodes <= decodes.min() + SPREAD / 2.0 * decodes.max()
    return [p.prefill_ms_per_token for p, lit in zip(points, light, strict=True) if lit and p.prefill_ms_per_token is not None]


def _bounded(prior: IterationParams, alpha: float, u: float, c: float, context: float) -> IterationParams:
    """perfParms from a fixed cost, a decode's cost at `context` and a prompt token's, each
    within [FLOOR, 2] of the prior's: c = beta + gamma, u = beta + gamma * context."""
    gamma = max(u - c, 0.0) / max(context - 1.0, 1.0)
    beta = max(c - gamma, 0.0)

    def clip(value: float, of: float) -> float:
        return min(max(value, FLOOR * of), 2.0 * of)

    return IterationParams(clip(alpha, prior.alpha), clip(beta, prior.beta), clip(gamma, prior.gamma))
