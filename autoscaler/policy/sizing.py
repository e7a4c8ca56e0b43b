"""Replica counts from the vLLM latency model (latency.py), with what the planner learns online.
Pure: the planner keeps a `Learned` between cycles.

Two estimators, each fed by one window's observation of an ISVC, neither a controller:
- the work scale of a (model, GPU): the ratio of the measured to the profile's per-token and
  per-request work, identified from the mean ITL (vLLM's ITL histogram sum over its count) at
  the measured load per replica. It is measured at every load, not only when SLOs are missed,
  so it converges from the profile in a few windows; but only from a window that looks like
  the steady state the model's mean ITL is (the bias's test below): in a burst, or while a
  queue drains, the batches are those of a load above the window's mean (up to the batch
  limit), and their ITL read at the mean rate is work the (model, GPU) does not have (on the
  Azure code trace mistral-7b on A100, whose simulated truth is its profile, learned 1.84 and
  held 4-5 replicas where 2 served);
- the step costs of a (model, GPU) with no profile: alpha and the per-token costs, from a
  conservative roofline prior (prior.py) and then measured across windows (identify.py). Its
  profile joins the catalog the optimizer places with (with_priors), so such an ISVC is placed
  on the GPU type whose prior serves it cheapest, and sized as any other;
- the attainment bias of an ISVC: the factor on the model's capacity under which the model's
  share of requests within the SLOs, at the measured load and the pool its fleet was balanced
  over, equals the measured share (vLLM's TTFT histogram and its per-request TPOT histogram
  count requests, as the SLOs do); past the model's capacity, the load a window served within
  the goal (learn_windows). It
  corrects what the mean cannot show (the tail), in log space with a bounded step, with no
  floor: an estimate, not a tightening per missed period, so steady load makes it settle
  instead of cycling. It learns only from a window that looks like the steady state the model
  predicts (or, while the ISVC misses more than its goal allows, one whose load only moved
  from the window's before: Window.beyond_goal), and only where the requests it missed differ
  from those the model predicts by more than Poisson noise: a window's few thousand requests
  give a miss of 0.2% as 0 or 10 misses by chance alone, and a capacity factor read off that
  difference is noise extrapolated to the goal (chat-8b with no profile, at half its capacity:
  0 measured against 5.5 predicted of 2,404 requests read as x1.44, three such windows sized it
  at 1.8 times its capacity).
Each window is learned from once.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..optimizer.domain import Catalog, IterationParams, ModelProfile, ServiceTarget
import numpy as np

from .identify import Identification, point
from .latency import Replica, Rows, Shape, capacities, identify_work_scale, predict_points
from .prior import prior_profile
from .observation import Observation, histogram_count, within

MIN_REQUESTS = 50  # fewer completions in a window say too little to learn from
LEARNING_RATE = 0.5  # share of the way to a window's estimate (log space)
# windows whose rate variations the sizing takes the median of (sized_variation): 5 minutes of
# the default 30 s cycles
VARIATION_WINDOWS = 9
MAX_STEP = math.log(1.5)  # one window moves an estimate by at most x1.5 (outliers)
UNINFORMATIVE_MISS = 0.002  # both measured and predicted misses below this: nothing to learn
STATIONARY_SIGMAS = 3.0  # two counts further apart than this many standard deviations of Poisson noise differ
FLAT_MISS = 0.1  # a miss that says the model is wrong even where it predicts none
# request shapes and work scales rounded to a 5% geometric grid before sizing (at most ~2.5% on
# the capacity, which the bias sees in closed loop): the shape sized with (sized_shape, over the
# last windows) moves by a few % a cycle, and each new point is a capacity search (ms)
SIZING_GRID = 0.05


def token_budget(accelerator: str) -> int:
    """`vllm serve`'s default max_num_batched_tokens by GPU (engine/arg_utils.py,
    get_batch_defaults): 16384 from 160 GiB (B200), 8192 on 70-160 GiB parts other than the
    A100, else 2048."""
    name = accelerator.upper()
    if "B200" in name:
        return 16384
    if "H100" in name or "H200" in name:
        return 8192
    return 2048


@dataclass
class Estimate:
    """A positive factor learned in log space; `windows` counts the windows it learned from."""

    value: float = 1.0
    windows: int = 0

    def learn(self, measured: float) -> None:
        step = max(min(math.log(measured) - math.log(self.value), MAX_STEP), -MAX_STEP)
        self.value *= math.exp(LEARNING_RATE * step)
        self.windows += 1


@dataclass
class Learned:
    work: dict[tuple[str, str], Estimate] = field(default_factory=dict)  # (model, GPU)
    bias: dict[str, Estimate] = field(default_factory=dict)  # ISVC key
    serving: dict[str, tuple[int, float]] = field(default_factory=dict)  # ISVC key: (replicas, since when)
    learned_at: dict[str, float] = field(default_factory=dict)  # ISVC key: when it last learned from a window
    identified: dict[tuple[str, str], Identification] = field(default_factory=dict)  # (model, GPU) with no profile
    # ISVC key: its arrivals' rate variation (rate_variation) in its last VARIATION_WINDOWS windows
    rate_cv2: dict[str, deque[float]] = field(default_factory=dict)
    # ISVC key: its finished requests' mean prompt and output tokens in its last
    # VARIATION_WINDOWS windows that had any, with their requests (see_shape)
    shapes: dict[str, deque[tuple[float, float, float]]] = field(default_factory=dict)

    def forget(self, key: str) -> None:
        """Drop what was learned of one ISVC (not of its model and GPU type)."""
        for learned in (self.bias, self.serving, self.learned_at, self.rate_cv2, self.shapes):
            learned.pop(key, None)


def profile(catalog: Catalog, learned: Learned, model: str, accelerator: str) -> ModelProfile | None:
    """The catalog's profile of (model, accelerator); where it has none, the prior's (prior.py)
    with the step costs identified so far; None where there is no prior either."""
    found = catalog.profiles.get((model, accelerator))
    if found is not None or accelerator not in catalog.accelerators:
        return found
    known = learned.identified.get((model, accelerator))
    # the KV cache vLLM reported, where it did: it replaces the bound, and bounds a token's bytes
    reported = None if known is None else known.kv_cache_tokens
    prior = prior_profile(model, accelerator, catalog.accelerators[accelerator].type, reported)
    if prior is None:
        return None
    identification = learned.identified.setdefault((model, accelerator), Identification(prior.params))
    return replace(prior, params=identification.current)


def with_priors(catalog: Catalog, learned: Learned, models: list[tuple[str, frozenset[str]]]) -> Catalog:
    """The catalog with a profile for every (model, allowed GPU type) it lacks and has a prior
    for (`models`: each model with its allowed GPU types, empty for all): what the optimizer
    places such an ISVC with. The catalog itself where nothing is missing. Each (model, allowed)
    is looked at once however many ISVCs share it (this runs every cycle)."""
    added = {
        (model, accelerator): found
        for model, allowed in dict.fromkeys(models)
        for accelerator in (allowed or catalog.accelerators)
        if (model, accelerator) not in catalog.profiles and (found := profile(catalog, learned, model, accelerator)) is not None
    }
    return replace(catalog, profiles={**catalog.profiles, **added}) if added else catalog


def replica(
    catalog: Catalog, learned: Learned, model: str, accelerator: str, max_batch: int, work_scale: float
) -> Replica | None:
    """The latency model's replica for (model, accelerator)'s profile (module doc: the
    identified prior's where the catalog has none); None where there is none or it is not
    iteration-based."""
    found = profile(catalog, learned, model, accelerator)
    if found is None or not isinstance(found.params, IterationParams):
        return None
    kv = found.kv_cache_tokens or found.max_batch_size * found.at_tokens  # Inferno's rule
    batch = max_batch or found.max_batch_size
    return Replica(found.params, batch, kv, token_budget(accelerator), work_scale=work_scale, prefill=found.prefill)


@dataclass(frozen=True)
class Deployment:
    """What an ISVC runs: its key, its model, the GPU type and batch limit of its replicas."""

    key: str
    model: str
    accelerator: str
    max_batch: int


@dataclass(frozen=True)
class Window:
    """One ISVC's window to learn from: what served it and how many replicas, what was seen."""

    runs: Deployment
    replicas: int
    obs: Observation
    target: ServiceTarget
    # requests running + waiting when the window began (the planner's cycle a window before),
    # None where not known: a window whose start held far more than its end drained a queue
    in_system_before: float | None = None
    # the replicas a load-aware router balanced the window's load over (latency.Shape.pool;
    # 1: a router blind to load): a balanced fleet's mean ITL is below a lone replica's, and it
    # misses fewer requests, so both the work scale and the bias read the window at its pool (a
    # bias read at one replica took the pool's gain for the model's error, and the planner's
    # pooling (planner._pooled) then counted that gain twice)
    pool: int = 1
    # whether the ISVC's requests over the planner's memory missed more than its goal allows
    # (guards.beyond_goal). Then its bias learns also from a window whose arrivals moved from
    # the window's before beyond noise, where its queue neither built nor drained and it missed
    # no deeper than a steady model error does (FLAT_MISS): a load that moves from minute to
    # minute passes the steady test in few windows, and the model's error there went
    # uncorrected (the Azure code trace: chat-8b's bias learned from 2 of its 14 windows, at
    # 89.5% on every seed; chat-13b on seed 2 92.5% -> 94.9% with these windows). Not the work
    # scale (the mean ITL of a moving load is not the steady state's), not a deeper miss (a
    # burst's queue, or its wake: all of a window missed behind a spike's backlog on the bursty
    # load), and not while the goal is met (the mixed run then took 0.9 GPU-hours more for no
    # request).
    beyond_goal: bool = False


def learn(
    learned: Learned, catalog: Catalog, runs: Deployment, replicas: int, obs: Observation, target: ServiceTarget, goal: float
) -> None:
    """Update the work scale of (model, accelerator) and the ISVC's bias from one window served
    by `replicas` replicas of that GPU type, for sizing at the attainment `goal`."""
    learn_windows(learned, catalog, [Window(runs, replicas, obs, target)], goal)


def learn_windows(learned: Learned, catalog: Catalog, windows: Sequence[Window], goal: float) -> None:
    """learn() from each window, at most one per ISVC, as if one after the other: the work
    scales in the windows' order (each bias is learned at the work scale its window saw, which
    the windows before it moved), then the model's misses the biases are learned from, for all
    windows in one vectorised prediction.

    A window raises a bias only where the model predicts the goal missed at its load: the
    capacity sized for is where the model's miss reaches 1 - goal, and a lighter window's misses
    are the tail of a lighter load, which the model's shape has less right than its capacity
    (the lone gaps of the shortest requests, which a prefill in them puts past the ITL SLO:
    chat-8b with no profile at 0.87 of its capacity, 21 misses of 2,408 requests predicted
    against 2 measured, read as x1.5, and two such windows sized it at 1.6 times its capacity,
    22% of its requests missed). A factor read there is the tail's, extrapolated to the goal.
    Since the planner sizes at the model's capacity, a model that underrates a replica is
    raised by the windows whose load outran the plan. Past the model's capacity (it predicts
    more than FLAT_MISS missed) a window that met the goal raises the bias to the capacity it
    showed, its load a replica, and no further: there the model's miss climbs to its saturation
    within a few % of rate and then lies flat, and a log-linear step read off that curve was the
    largest up (mistral-7b on the slow ramp, seed 4 at 120 s: 1.1% missed at 2.18 req/s a
    replica where the model predicted 82%, read as x1.5; at the bias of 1.22 it learned, three
    replicas were left to the ramp's 8 req/s, and all of minutes 57-58 missed). Lowering stays
    open to every window: a miss beyond the model's, beyond noise, is the model overrating the
    replica, on the safe side to correct."""
    keys = [window.runs.key for window in windows]
    if len(set(keys)) != len(keys):
        raise ValueError("learn_windows: more than one window of an ISVC (learn them one call at a time)")
    questions = [q for window in windows if (q := _bias_question(learned, catalog, window)) is not None]
    misses = _model_misses(questions)
    past = [here > FLAT_MISS and q.measured_miss <= 1.0 - goal for q, (here, _) in zip(questions, misses, strict=True)]
    shown = iter(_capacities_at([q for q, beyond in zip(questions, past, strict=True) if beyond], goal))
    for question, (here, there), beyond in zip(questions, misses, past, strict=True):
        capacity = next(shown) if beyond else None
        if _close(question.requests * question.measured_miss, question.requests * here):
            continue  # the misses the model predicts, within noise
        if capacity is not None:  # past the model's capacity, the goal met: the load is what it showed
            factor = question.rate / capacity if capacity > 0.0 else math.exp(MAX_STEP)
            if factor <= 1.0:
                continue  # read through the buckets past it, at the SLOs within it: nothing shown
        else:
            factor = _capacity_factor(here, there, question.measured_miss)
        if factor is not None and factor > 1.0 and here <= 1.0 - goal:
            continue  # the model predicts the goal met here: the window is below the capacity sized
        if factor is not None:
            question.bias.learn(factor * question.bias.value)


@dataclass(frozen=True)
class _BiasQuestion:
    """What a window asks of the model to learn an ISVC's bias from: its miss at `rate` and 10%
    above, read as the collector reads vLLM's histograms (`seen`), against the measured miss."""

    bias: Estimate
    replica: Replica
    shape: Shape
    rate: float  # per replica, over the bias: the rate the model's capacity is compared at
    requests: float  # that the window's shares are of
    measured_miss: float
    seen: _AsHistogram
    slos: tuple[float, float]  # TTFT and ITL (ms; inf: none) that its capacity is sized at


def _bias_question(learned: Learned, catalog: Catalog, window: Window) -> _BiasQuestion | None:
    """Learn the work scale from one window, and what its bias is to be learned from (None:
    nothing)."""
    runs, replicas, obs, target = window.runs, window.replicas, window.obs, window.target
    key, model, accelerator, max_batch = runs.key, runs.model, runs.accelerator, runs.max_batch
    requests = histogram_count(obs.ttft_buckets)
    if replicas <= 0 or requests < MIN_REQUESTS or not obs.avg_out_tokens or obs.avg_in_tokens is None:
        return None
    work = learned.work.setdefault((model, accelerator), Estimate())
    model_replica = replica(catalog, learned, model, accelerator, max_batch, work.value)
    if model_replica is None:
        return None
    rate = obs.arrival_rate / replicas
    steady = _stationary(obs, window.in_system_before)
    if obs.itl_ms is not None and obs.avg_out_tokens > 1:
        if (model, accelerator) not in catalog.profiles:  # the prior's: its step costs identified
            _identify(learned, catalog, runs, obs, replicas, model_replica.costs.frontend_ms)
            model_replica = replica(catalog, learned, model, accelerator, max_batch, work.value)
        elif (
            steady
            and (
                scale := identify_work_scale(
                    model_replica, Shape(obs.avg_in_tokens, obs.avg_out_tokens, pool=window.pool), rate, obs.itl_ms
                )
            )
            is not None
        ):
            work.learn(scale)
    model_replica = replace(model_replica, work_scale=work.value)
    shape = Shape(obs.avg_in_tokens, obs.avg_out_tokens, rate_variation(obs), pool=window.pool)
    itl_slo = _itl_slo(obs, target)
    measured = measured_miss(obs, target)
    # the model read through the same buckets: the collector interpolates inside the bucket that
    # holds the SLO (30 ms lies between vLLM's 25 and 50 ms bounds), so compare like with like
    seen = _AsHistogram(_bracket(obs.ttft_buckets, target.ttft_ms), _bracket(obs.tpot_buckets, itl_slo))
    bias = learned.bias.setdefault(key, Estimate())
    moved = window.beyond_goal and measured <= FLAT_MISS and _queue_steady(obs, window.in_system_before)
    if not (steady or moved):
        return None  # a burst's queue, or its wake: the model's steady state says nothing of that miss
    slos = (target.ttft_ms or math.inf, itl_slo or math.inf)
    return _BiasQuestion(bias, model_replica, shape, rate / bias.value, requests, measured, seen, slos)


def _identify(learned: Learned, catalog: Catalog, runs: Deployment, obs: Observation, replicas: int, frontend_ms: float) -> None:
    """One window's KV cache and point (identify.py) for a (model, GPU) with no profile: a newly
    reported cache first, as it may lower the prior the point is fitted against (prior.py)."""
    prompt_per_s, prompt, out = obs.prompt_tokens_per_s, obs.avg_in_tokens, obs.avg_out_tokens
    if obs.window_s <= 0.0 or obs.itl_ms is None or prompt is None or out is None or prompt_per_s is None:
        return
    identification = learned.identified[(runs.model, runs.accelerator)]
    kv = int(obs.kv_cache_tokens) if obs.kv_cache_tokens is not None and obs.kv_cache_tokens >= 1.0 else None
    if kv is not None and kv != identification.kv_cache_tokens:
        bound = prior_profile(runs.model, runs.accelerator, catalog.accelerators[runs.accelerator].type, kv)
        if bound is not None:  # it had one: the identification exists
            identification.reported_cache(kv, bound.params)
    shown = (obs.itl_ms, obs.itl_gaps, obs.ttft_ms, prompt, out, prompt_per_s, obs.window_s)
    identification.learn(point(*shown, replicas, frontend_ms))


def rate_variation(obs: Observation) -> float:
    """The squared coefficient of variation of the arrival rate over seconds (latency.Shape's
    rate_cv2) that the window's Allan factor D shows beyond Poisson noise: a rate varying
    slowly against the intervals T adds (D - 1) r / T to the variance of the rate read over
    them (r the mean), so cv2 = (D - 1) / (r T). Only the excess beyond STATIONARY_SIGMAS
    standard deviations of D's noise under Poisson arrivals counts (k pairs of intervals of n
    arrivals each: var ~ (3 + 1 / n) / k, neighbouring differences sharing an interval): with
    the 10 pairs of a minute's 5 s probes (the largest left out), 1.65 is noise; with the
    largest left out Poisson counts read ~0.7, so the excess is if anything understated. 0
    where not measured."""
    d, pairs, seconds, rate = obs.arrival_dispersion, obs.dispersion_pairs, obs.dispersion_s, obs.arrival_rate
    if d is None or pairs <= 0 or seconds <= 0.0 or rate <= 0.0:
        return 0.0
    per_interval = rate * seconds
    noise = STATIONARY_SIGMAS * math.sqrt((3.0 + 1.0 / per_interval) / pairs)
    return max(d - 1.0 - noise, 0.0) / per_interval


def see_arrivals(learned: Learned, key: str, obs: Observation) -> None:
    """Keep the ISVC's arrivals' rate variation as this window shows it, for its sizing."""
    learned.rate_cv2.setdefault(key, deque(maxlen=VARIATION_WINDOWS)).append(rate_variation(obs))


def sized_variation(learned: Learned, key: str) -> float:
    """The rate variation an ISVC is sized with: the median of its last windows' (0 before
    any). A property of its traffic, not of one window: a window with two changes of level in
    it (a Markov-modulated load's), or with a burst of dropped requests (gone from the gauges
    without a completion, they read as fewer arrivals), is one outlier; clumps that recur show
    in most windows."""
    seen = learned.rate_cv2.get(key)
    return float(np.median(seen)) if seen else 0.0


def see_shape(learned: Learned, key: str, obs: Observation) -> None:
    """Keep the window's mean request shape (prompt and output tokens) for the ISVC's sizing
    (sized_shape), with the requests it is the mean of (its arrivals: as many finish in a
    window as arrive, within noise); none where nothing finished in it."""
    if obs.avg_in_tokens is not None and obs.avg_out_tokens:
        window = (max(obs.arrival_rate * obs.window_s, 1.0), obs.avg_in_tokens, obs.avg_out_tokens)
        learned.shapes.setdefault(key, deque(maxlen=VARIATION_WINDOWS)).append(window)


def sized_shape(learned: Learned, key: str) -> tuple[float, float] | None:
    """The mean prompt and output tokens an ISVC is sized with: over the requests of its last
    windows (see_shape; None before any finished). A property of its traffic, not of one
    window: a window's mean of a hundred heavy-tailed prompts moves by 20% with its sample
    alone (chat-13b on the bursty workload: 953-1,511 tokens within four minutes), and sized
    from each window in turn, its capacity moved as much (3.7-5.3 req/s); the HPA holds the
    most replicas asked for over its 300 s window, so every draw that crossed a replica stayed
    for five minutes (a third replica where two met every request). The mean, not the median
    of the windows' means: a median of heavy-tailed means lies below the mean, and would size
    for shorter requests than come. A shape that moves for good is followed as its windows
    replace the older ones."""
    seen = learned.shapes.get(key)
    if not seen:
        return None
    requests, prompt, output = np.array(seen).T
    return float(requests @ prompt / requests.sum()), float(requests @ output / requests.sum())


def _stationary(obs: Observation, in_system_before: float | None = None) -> bool:
    """Whether the window looks like the steady state the model predicts: its arrivals differ
    from the window's before, the requests that got their first token in it from its arrivals,
    and the requests in the system (running + waiting) at its end from those at its start,
    where known, by no more than Poisson noise (STATIONARY_SIGMAS standard deviations of the
    difference of two counts). A burst fails the first; the window that drains its queue (the
    arrival rate back to normal, but first tokens beyond arrivals, each late) the second; the
    window that finishes a drained queue's batches the third: its queue is gone by its first
    cycles, so its first tokens match its arrivals, but the requests it completes decoded in the
    batches of the backlog, long past the steady state's (MMPP at a 120 s cold start: chat-8b's
    mean ITL 14.9 ms and TTFT 3.3 s in such a window, 10 ms and 46 ms a window later, learned as
    a work scale of 1.22 and a bias of 0.82 that held a fourth replica where three met 99.98%)."""
    return _close(obs.arrival_rate * obs.window_s, obs.previous_rate * obs.window_s) and _queue_steady(obs, in_system_before)


def _queue_steady(obs: Observation, in_system_before: float | None) -> bool:
    """_stationary's tests but the arrivals': the window's first tokens within noise of its
    arrivals, and the requests in the system at its end of those at its start (where known)."""
    arrived = obs.arrival_rate * obs.window_s
    started = histogram_count(obs.ttft_buckets) if obs.ttft_buckets else arrived
    drained = in_system_before is not None and not _close(in_system_before, obs.running + obs.waiting)
    return _close(started, arrived) and not drained


def _close(a: float, b: float) -> bool:
    """Two counts within STATIONARY_SIGMAS standard deviations of Poisson noise of their difference."""
    return abs(a - b) <= STATIONARY_SIGMAS * math.sqrt(max(a + b, 1.0))


def measured_miss(obs: Observation, target: ServiceTarget) -> float:
    """The share of the window's requests (those that got their first token in it) outside the
    SLOs: the larger of the TTFT's and the per-request ITL's misses, each read as the collector
    interpolates a bucket; within [0, 1] whatever the buckets (cumulative counts that fall)."""
    met = min(_share(obs.ttft_buckets, target.ttft_ms), _share(obs.tpot_buckets, _itl_slo(obs, target)))
    return min(max(1.0 - met, 0.0), 1.0)


def _itl_slo(obs: Observation, target: ServiceTarget) -> float:
    """The ITL SLO a window is read against: the target's from the per-request histogram; without
    it (vLLM < 0.11) the window says nothing of ITL (0: the share and the model of TTFT alone)."""
    return target.itl_ms if histogram_count(obs.tpot_buckets) else 0.0


def _share(buckets, slo_ms: float) -> float:
    met, total = within(buckets, slo_ms / 1000.0)
    return met / total if slo_ms and total else 1.0


def _bracket(buckets, slo_ms: float) -> tuple[float, float, float]:
    """(lower bound, upper bound, weight of the upper) in ms of the bucket holding the SLO; an
    SLO on a bound, or no SLO, reads at the SLO itself."""
    if not slo_ms:
        return math.inf, math.inf, 0.0
    lower = 0.0
    for bound_s, _ in buckets:
        bound = bound_s * 1000.0
        if bound >= slo_ms:
            if bound == slo_ms or math.isinf(bound):
                return slo_ms, slo_ms, 0.0
            return lower, bound, (slo_ms - lower) / (bound - lower)
        lower = bound
    return slo_ms, slo_ms, 0.0


@dataclass(frozen=True)
class _AsHistogram:
    """(lower bound, upper bound, weight of the upper) of the buckets holding the TTFT and ITL SLOs."""

    ttft: tuple[float, float, float]
    itl: tuple[float, float, float]


def _model_misses(questions: Sequence[_BiasQuestion]) -> np.ndarray:
    """Each question's model miss at its rate and 10% above (one row each) as the collector
    would read it off vLLM's histograms: at both bounds of the buckets holding the SLOs,
    interpolated; one vectorised prediction of 4 points per question."""
    count = len(questions)
    if not count:
        return np.zeros((0, 2))
    rows = Rows.of([(q.replica, q.shape) for q in questions]).take(np.repeat(np.arange(count), 4))
    # per question: (rate, lower bounds), (rate x 1.1, lower), (rate, upper), (rate x 1.1, upper)
    rates = np.array([(q.rate, q.rate * 1.1) * 2 for q in questions]).reshape(-1)
    ttft = np.array([[q.seen.ttft[bound]] * 2 for q in questions for bound in (0, 1)]).reshape(-1)
    itl = np.array([[q.seen.itl[bound]] * 2 for q in questions for bound in (0, 1)]).reshape(-1)
    p = predict_points(rows, rates, ttft, itl)
    ttft_share, itl_share = (v.reshape(count, 2, 2) for v in (p.ttft_share, p.itl_share))  # question, bound, rate
    ttft_upper = np.array([q.seen.ttft[2] for q in questions])[:, None]
    itl_upper = np.array([q.seen.itl[2] for q in questions])[:, None]
    ttft_seen = ttft_share[:, 0] + ttft_upper * (ttft_share[:, 1] - ttft_share[:, 0])
    itl_seen = itl_share[:, 0] + itl_upper * (itl_share[:, 1] - itl_share[:, 0])
    return 1.0 - np.minimum(ttft_seen, itl_seen)


def _capacities_at(questions: Sequence[_BiasQuestion], goal: float) -> np.ndarray:
    """The model's capacity (per replica, as each question's rate) at the goal for each
    question's replica, shape and SLOs: one batched search."""
    if not questions:
        return np.zeros(0)
    return capacities(
        [(q.replica, q.shape) for q in questions],
        np.array([q.slos[0] for q in questions]),
        np.array([q.slos[1] for q in questions]),
        goal,
    )


def _capacity_factor(here: float, there: float, measured_miss: float) -> float | None:
    """k such that the model at rate / k predicts the measured miss, from the model's miss at
    the rate (`here`) and 10% above (`there`): log-miss against log-rate is near linear over a
    few %, so two points of its curve locate it. None where uninformative."""
    if max(here, measured_miss) < UNINFORMATIVE_MISS:
        return None
    if FLAT_MISS < measured_miss < here:
        # both say the replica is overloaded and the model only deeper: how deep a queue's miss
        # goes is its history, not the steady state the model predicts, and past its capacity
        # the model's miss is near flat, so the log-linear step read off it was the largest up
        # (x1.5 for 66% measured against 79% predicted: chat-8b on 2 replicas at 40 req/s)
        return None
    floor = UNINFORMATIVE_MISS / 2  # a miss of zero has no logarithm; below this it is noise
    slope = (math.log(max(there, floor)) - math.log(max(here, floor))) / math.log(1.1)
    gap = math.log(max(measured_miss, floor)) - math.log(max(here, floor))
    if slope <= 0.0:
        # the model is flat here: far below its capacity, where only a clear miss it does not
        # predict says it is wrong; or past it (a replica overloaded while others wait for a
        # GPU), where it already predicts the miss and nothing is learned
        return math.exp(-MAX_STEP) if measured_miss > FLAT_MISS and here < measured_miss / 2 else None
    # the rate at which the model would miss as measured, relative to the rate served
    log_ratio = gap / slope
    return math.exp(-max(min(log_ratio, MAX_STEP), -MAX_STEP))


@dataclass(frozen=True)
class Sizing:
    """What one ISVC's capacity is asked for: what it would run, its request shape and targets."""

    runs: Deployment
    shape: Shape
    target: ServiceTarget
    pool: int = 1  # the replicas a load-aware router balances it over (latency.Shape.pool)


def per_replica_capacity(
    learned: Learned, catalog: Catalog, runs: Deployment, shape: Shape, target: ServiceTarget, goal: float
) -> float | None:
    """Requests/s one replica serves within the SLOs at `goal`, as learned so far (None: the
    profile is not one the model reads)."""
    return per_replica_capacities(learned, catalog, [Sizing(runs, shape, target)], goal)[0]


def per_replica_capacities(learned: Learned, catalog: Catalog, asked: Sequence[Sizing], goal: float) -> list[float | None]:
    """per_replica_capacity() of each, the capacity searches that no earlier cycle made (a new
    grid point of shape or work scale) all in one batched search."""
    points: list[_GridPoint | None] = []
    for ask in asked:
        runs, shape, target = ask.runs, ask.shape, ask.target
        work = learned.work.get((runs.model, runs.accelerator), Estimate()).value
        model_replica = replica(catalog, learned, runs.model, runs.accelerator, runs.max_batch, _rounded(work))
        rounded = Shape(
            _rounded(shape.in_tokens), _rounded(shape.out_tokens), _rounded(sized_variation(learned, runs.key)), ask.pool
        )
        slos = (target.ttft_ms or math.inf, target.itl_ms or math.inf)
        points.append(None if model_replica is None else _GridPoint(model_replica, rounded, *slos, goal))
    found = iter(_CAPACITIES.get([p for p in points if p is not None]))
    return [
        None if grid is None else learned.bias.get(ask.runs.key, Estimate()).value * next(found)
        for ask, grid in zip(asked, points, strict=True)
    ]


def _rounded(value: float) -> float:
    """To the nearest point of the SIZING_GRID geometric grid (near-equal inputs share a sizing)."""
    if value <= 0.0:
        return value
    step = math.log1p(SIZING_GRID)
    return math.exp(round(math.log(value) / step) * step)


@dataclass(frozen=True)
class _GridPoint:
    """A capacity search's inputs, shape and work scale rounded to the grid."""

    replica: Replica
    shape: Shape
    ttft_ms: float
    itl_ms: float
    goal: float


class _CapacityCache:
    """Capacities by grid point, the least recently used forgotten past `size` (a few grid
    points around each ISVC's shape, for thousands); the points not known are searched in one
    batch per goal."""

    def __init__(self, size: int) -> None:
        self.size, self.known = size, OrderedDict[_GridPoint, float]()

    def get(self, points: Sequence[_GridPoint]) -> list[float]:
        missing = list(dict.fromkeys(p for p in points if p not in self.known))
        for goal in {p.goal for p in missing}:
            searched = [p for p in missing if p.goal == goal]
            slos = (np.array([getattr(p, name) for p in searched]) for name in ("ttft_ms", "itl_ms"))
            rates = capacities([(p.replica, p.shape) for p in searched], *slos, goal)
            self.known.update(zip(searched, rates.tolist(), strict=True))
        for p in points:
            self.known.move_to_end(p)
        found = [self.known[p] for p in points]
        while len(self.known) > self.size:
            self.known.popitem(last=False)
        return found


_CAPACITIES = _CapacityCache(65536)


def replicas_for(rate: float, per_replica: float) -> int:
    """Replicas for `rate` requests/s at `per_replica` each (at least one where there is load)."""
    if rate <= 0.0:
        return 0
    if per_replica <= 0.0:
        return 0  # the SLOs cannot be met by any count: the caller keeps the optimizer's
    return max(math.ceil(rate / per_replica - 1e-9), 1)
