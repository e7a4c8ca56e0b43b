"""Live load of every ISVC from vLLM's metrics in Prometheus: one PromQL query per figure for
all ISVCs at once, grouped by namespace and the ISVC label.

Everything is computed by Prometheus over a trailing window (counter resets of restarted pods
handled by increase()), so the collector keeps no state between cycles and a restarted
controller reads the same figures. What is computed from the figures (arrivals, means) is
policy.observation.observe, which the simulator's observations go through too.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

from ..limits import MAX_MAGNITUDE, finite_problem
from ..optimizer.domain import Catalog
from ..policy.observation import WINDOW_S, Key, Observation, WindowFigures, observe


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollectorSettings:
    window_s: int = WINDOW_S
    # the short window at the end of `window_s` (the control period; None: not measured): the
    # planner tells a step that has ended from a ramp by it. Prometheus's increase() and
    # delta() need two samples within the range and extrapolate the rest, so it should span a
    # few scrape intervals; with fewer than two samples in it the figure is absent and the
    # planner plans from the window alone
    recent_s: int | None = 30
    # the intervals the arrivals' burstiness (their Allan factor, observation.allan_factor) is
    # counted over within the window: the scrape interval (the counters' own samples are
    # differenced, no increase() over it); at least 3 in the window, None: not measured. 5 s, the
    # sample PodMonitor's and the simulator's: at 15 s clumps of seconds go unseen (README,
    # *The scrape interval*)
    dispersion_s: int | None = 5
    isvc_label: str = "isvc"  # the label your scrape config puts the ISVC name in (see config/)
    # every gap between a request's outputs: its sum over its count is the mean decode step as
    # requests see it (vLLM < 0.11 names it vllm:time_per_output_token_seconds, removed since)
    itl_metric: str = "vllm:inter_token_latency_seconds"
    # one observation per finished request, its mean gap: the share within the ITL SLO (vLLM >= 0.11)
    tpot_metric: str = "vllm:request_time_per_output_token_seconds"


METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")  # Prometheus's: what may go into PromQL bare


class CollectError(Exception):
    """Prometheus could not be asked (down, timing out, refusing the query)."""


HISTOGRAMS = ("ttft", "tpot")  # those whose buckets are read, each against its SLO


def histogram_metric(settings: CollectorSettings, histogram: str) -> str:
    return "vllm:time_to_first_token_seconds" if histogram == "ttft" else settings.tpot_metric


def queries(settings: CollectorSettings, bucket_bounds: Mapping[str, str] | None = None) -> dict[str, str]:
    """The PromQL of each figure, each for all ISVCs. `bucket_bounds` limits a histogram's
    buckets to the `le` values given as a regex (those around the SLOs: see bracketing_bounds);
    the +Inf bucket doubles as the completion count for the mean."""
    by = f"namespace, {settings.isvc_label}"
    w = f"{settings.window_s}s"
    bucket_bounds = bucket_bounds or {}

    def increase(metric: str, offset: str = "", over: str = w) -> str:
        return f"sum by ({by}) (increase({metric}[{over}]{offset}))"

    def mean_length(histogram: str) -> str:
        # the finished requests' own sum over their own count: numerator and denominator are
        # the same requests (the token counters are taken at other moments: observation.py)
        return f"{increase(histogram + '_sum')} / {increase(histogram + '_count')}"

    def growth(offset: str = "", over: str = w) -> str:
        return " + ".join(f"sum by ({by}) (delta(vllm:num_requests_{g}[{over}]{offset}))" for g in ("running", "waiting"))

    def buckets(histogram: str) -> str:
        literal = bucket_bounds.get(histogram, "").replace("\\", "\\\\")  # a PromQL string: backslashes doubled
        matcher = f'{{le=~"{literal}"}}' if histogram in bucket_bounds else ""
        return f"sum by ({by}, le) (increase({histogram_metric(settings, histogram)}_bucket{matcher}[{w}]))"

    def arrivals(offset: int) -> str:
        """Arrivals per ISVC over the `dispersion_s` before `offset` seconds ago: completions
        plus the growth of running + waiting, each series differenced against itself (a pod
        that comes or goes adds nothing; a counter reset is clamped to none)."""
        s = settings.dispersion_s

        def diff(metric: str) -> str:
            now = f"{metric} offset {offset}s" if offset else metric
            return f"{now} - {metric} offset {offset + s}s"

        completed = f"sum by ({by}) (clamp_min({diff('vllm:request_success_total')}, 0))"
        return " + ".join([completed, *(f"sum by ({by}) ({diff('vllm:num_requests_' + g)})" for g in ("running", "waiting"))])

    dispersion = {}
    if measures_dispersion(settings):
        s = settings.dispersion_s
        # the squared differences of neighbouring intervals' arrivals over the window, the
        # largest left out (allan_factor), over twice the mean arrivals of an interval
        pairs = f"(({arrivals(0)}) - ({arrivals(s)})) ^ 2"
        # a subquery's points are the step's multiples within its range: one second short of a
        # multiple, so that Prometheus 2.x (range closed at its start) and 3.x (open) take the
        # same ones, the pairs within the window (allan_factor's) and its intervals
        over = f"[{settings.window_s - s - 1}s:{s}s]"
        trimmed = f"(sum_over_time(({pairs}){over}) - max_over_time(({pairs}){over})) / (count_over_time(({pairs}){over}) - 1)"
        dispersion = {"dispersion": f"{trimmed} / (2 * avg_over_time(({arrivals(0)})[{settings.window_s - 1}s:{s}s]))"}
    recent = {}
    if measures_recent(settings):
        r = f"{settings.recent_s}s"
        recent = {"completed_recent": increase("vllm:request_success_total", over=r), "growth_recent": growth(over=r)}
    return (
        dispersion
        | recent
        | {
            "completed": increase("vllm:request_success_total"),
            "completed_before": increase("vllm:request_success_total", f" offset {w}"),
            "growth": growth(),
            "growth_before": growth(f" offset {w}"),
            "running": f"sum by ({by}) (vllm:num_requests_running)",
            "waiting": f"sum by ({by}) (vllm:num_requests_waiting)",
            "prompt_tokens": increase("vllm:prompt_tokens_total"),
            "prompt_len": mean_length("vllm:request_prompt_tokens"),
            "output_len": mean_length("vllm:request_generation_tokens"),
            "ttft_sum": increase("vllm:time_to_first_token_seconds_sum"),
            "itl_sum": increase(settings.itl_metric + "_sum"),
            "itl_count": increase(settings.itl_metric + "_count"),
            "ttft_buckets": buckets("ttft"),
            "tpot_buckets": buckets("tpot"),
            # an info gauge: the figures are its labels (per replica; the smallest is the bound)
            "kv_cache": f"min by ({by}, num_gpu_blocks, block_size) (vllm:cache_config_info)",
        }
    )


def measures_dispersion(settings: CollectorSettings) -> bool:
    return settings.dispersion_s is not None and 2 <= settings.dispersion_s and 3 * settings.dispersion_s <= settings.window_s


def measures_recent(settings: CollectorSettings) -> bool:
    return settings.recent_s is not None and 0 < settings.recent_s < settings.window_s


def slo_seconds(catalog: Catalog) -> dict[str, set[float]]:
    """Every TTFT and ITL SLO of the service classes, in seconds (histogram units), by the
    histogram each is read from."""
    targets = [t for cls in catalog.classes.values() for t in cls.targets.values()]
    return {"ttft": {t.ttft_ms / 1000.0 for t in targets if t.ttft_ms}, "tpot": {t.itl_ms / 1000.0 for t in targets if t.itl_ms}}


def bracketing_bounds(bounds: list[str], slos_s: set[float]) -> str:
    """A regex of the bucket bounds that `within` needs for these SLOs: for each SLO the
    largest bound below it and the smallest at or above it, and +Inf. A histogram of 20+
    buckets then costs Prometheus a handful per ISVC."""
    numeric = []
    for b in bounds:
        try:
            numeric.append((math.inf if b == "+Inf" else _number(b, 0.0), b))
        except Unusable:
            continue  # a bound no bucket can be read with (le="abc"): never asked for
    numeric.sort()
    keep = {b for value, b in numeric if value == float("inf")}
    for slo in slos_s:
        below = [b for value, b in numeric if value < slo]
        above = [b for value, b in numeric if value >= slo]
        keep.update(below[-1:] + above[:1])
    return "|".join(sorted(re.escape(b) for b in keep))


Samples = list[dict]  # Prometheus instant-vector result: [{"metric": {...}, "value": [t, "v"]}]
# only for the means or the short window: one unusable leaves that figure unknown (0 / 0 over
# a window in which nothing finished is NaN: no mean)
OPTIONAL = ("ttft_sum", "itl_sum", "itl_count", "prompt_len", "output_len", "completed_recent", "growth_recent", "dispersion")
LABELLED = ("kv_cache",)  # read off labels, not values


class Unusable(ValueError):
    """A sample no decision may be made from: not a number, not finite, or out of range."""


def _key(sample: object, label: str) -> Key:
    metric = sample.get("metric") if isinstance(sample, dict) else None
    if not isinstance(metric, dict):
        raise Unusable(f"a sample without labels: {sample!r:.80}")
    return (str(metric.get("namespace", "")), str(metric.get(label, "")))


def _number(text: object, low: float = -MAX_MAGNITUDE) -> float:
    """A sample value as Prometheus writes it ("12.5", "NaN", "+Inf"), refused unless finite and
    within range: vLLM can export NaN, increase() turns an Inf into NaN, and 1e308 overflows
    the products the planner forms from it."""
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise Unusable(f"{text!r:.40} is not a number") from None
    problem = finite_problem(value, low)
    if problem:
        raise Unusable(problem)
    return value


def _le(sample: object) -> object:
    metric = sample.get("metric") if isinstance(sample, dict) else None
    return metric.get("le") if isinstance(metric, dict) else None


def _value(sample: dict) -> object:
    value = sample.get("value")
    return value[1] if isinstance(value, (list, tuple)) and len(value) == 2 else None


def _attributed(samples: Samples, label: str, name: str) -> Iterator[tuple[Key, dict]]:
    """Each sample with the ISVC it belongs to; one without labels belongs to none and is
    skipped with an error line."""
    for sample in samples if isinstance(samples, list) else ():
        try:
            yield _key(sample, label), sample
        except Unusable as exc:
            log.error("Prometheus answer to %s: %s; sample skipped", name, exc)


def _by_key(samples: Samples, label: str, name: str, broken: dict[Key, str]) -> dict[Key, float]:
    result = {}
    for key, sample in _attributed(samples, label, name):
        try:
            result[key] = _number(_value(sample))
        except Unusable as exc:
            if name not in OPTIONAL:
                broken.setdefault(key, f"{name}: {exc}")
    return result


def _buckets(samples: Samples, label: str, name: str, broken: dict[Key, str]) -> dict[Key, tuple[tuple[float, float], ...]]:
    grouped: dict[Key, list[tuple[float, float]]] = {}
    bad: set[Key] = set()
    for key, sample in _attributed(samples, label, name):
        le = _le(sample)
        try:
            bound = math.inf if le in (None, "+Inf") else _number(le, 0.0)
            grouped.setdefault(key, []).append((bound, _number(_value(sample), 0.0)))
        except Unusable as exc:
            bad.add(key)
            broken.setdefault(key, f"{name} (le={le!r:.40}): {exc}")
    result = {}
    for key, pairs in grouped.items():
        if key in bad:
            continue
        ordered = sorted(pairs)
        # increase() extrapolates each bucket alone, so neighbours can come slightly out of
        # order; cumulative counts never fall (histogram_quantile() corrects them the same way)
        counts = itertools.accumulate((c for _, c in ordered), max)
        result[key] = tuple(zip((b for b, _ in ordered), counts, strict=True))
    return result


def observations(results: Mapping[str, Samples], settings: CollectorSettings) -> dict[Key, Observation]:
    """One Observation per ISVC that has its completion counter in Prometheus; an ISVC absent
    here has no data this cycle (the planner keeps its last decision).

    A sample that is not a finite number in range is the fault of its ISVC alone, logged once
    per cycle: an unusable load figure leaves the ISVC out (its last decision kept), an unusable
    histogram leaves that histogram out (the latency model learns nothing from it this cycle)."""
    label = settings.isvc_label
    unusable: dict[Key, str] = {}
    figures = {
        name: _by_key(results.get(name) or [], label, name, unusable)
        for name in queries(settings)
        if not name.endswith("buckets") and name not in LABELLED
    }
    kv_cache = _kv_cache_tokens(results.get("kv_cache") or [], label)
    bad_histograms: dict[Key, str] = {}
    ttft_buckets = _buckets(results.get("ttft_buckets") or [], label, "ttft_buckets", bad_histograms)
    tpot_buckets = _buckets(results.get("tpot_buckets") or [], label, "tpot_buckets", bad_histograms)
    observed = {}
    for key in figures["completed"].keys() - unusable.keys():
        obs = _observation(key, figures, ttft_buckets.get(key, ()), tpot_buckets.get(key, ()), settings, kv_cache.get(key))
        problem = obs.problem()
        if problem:
            unusable[key] = problem
        else:
            observed[key] = obs
    for key, problem in unusable.items():
        log.error("%s/%s: unusable Prometheus data (%s): no load data this cycle, last decision kept", *key, problem)
    for key, problem in bad_histograms.items():
        if key not in unusable:
            log.error("%s/%s: unusable histogram (%s): left out this cycle", *key, problem)
    return observed


def instants(results: Mapping[str, Samples], start: float, end: float) -> list[tuple[float, dict[str, Samples]]]:
    """Range queries' answers (each series with its points, `values`) as the instant answers
    at each of their steps within [start, end], oldest first: what each query answered then. A
    series or point that is not one is left out; observations() judges the values."""
    steps: dict[float, dict[str, list]] = {}
    for name, series in results.items():
        for one in series if isinstance(series, list) else ():
            points = one.get("values") if isinstance(one, dict) else None
            for point in points if isinstance(points, list) else ():
                if not (isinstance(point, list) and len(point) == 2):
                    continue
                try:
                    at = float(point[0])
                except (TypeError, ValueError):
                    continue
                if start <= at <= end:
                    steps.setdefault(at, {}).setdefault(name, []).append({"metric": one.get("metric"), "value": point})
    return sorted(steps.items())


def _kv_cache_tokens(samples: Samples, label: str) -> dict[Key, float]:
    """A replica's KV cache in tokens per ISVC, from vLLM's cache_config_info labels
    (num_gpu_blocks x block_size), the smallest of its replicas'; an ISVC whose labels are not
    usable numbers is left out (its prior's bound stands)."""
    result: dict[Key, float] = {}
    for key, sample in _attributed(samples, label, "kv_cache"):
        metric = sample["metric"]
        try:
            tokens = _number(metric.get("num_gpu_blocks"), 1.0) * _number(metric.get("block_size"), 1.0)
        except Unusable as exc:
            log.error("%s/%s: vllm:cache_config_info: %s; its KV cache left unknown", *key, exc)
            continue
        result[key] = min(tokens, result.get(key, math.inf))
    return result


def _observation(
    key: Key,
    figures: dict[str, dict[Key, float]],
    ttft_buckets,
    tpot_buckets,
    settings: CollectorSettings,
    kv_cache_tokens: float | None = None,
) -> Observation:
    def figure(name: str) -> float:
        return figures[name].get(key, 0.0)

    recent_s = float(settings.recent_s) if measures_recent(settings) else None
    dispersion = figures.get("dispersion", {}).get(key)
    return observe(
        WindowFigures(
            window_s=float(settings.window_s),
            completed=figure("completed"),
            growth=figure("growth"),
            completed_before=figures["completed_before"].get(key),
            growth_before=figure("growth_before"),
            running=figure("running"),
            waiting=figure("waiting"),
            prompt_tokens=figure("prompt_tokens"),
            prompt_len=figures["prompt_len"].get(key),
            output_len=figures["output_len"].get(key),
            ttft_sum=figures["ttft_sum"].get(key),
            itl_sum=figures["itl_sum"].get(key),
            itl_count=figures["itl_count"].get(key),
            ttft_buckets=ttft_buckets,
            tpot_buckets=tpot_buckets,
            kv_cache_tokens=kv_cache_tokens,
            recent_s=recent_s,
            completed_recent=_recent(key, figures) if recent_s else None,
            growth_recent=figures.get("growth_recent", {}).get(key, 0.0),
            dispersion=dispersion,
            # the subquery's intervals: window / dispersion_s, their pairs one fewer, the largest left out
            dispersion_pairs=int(settings.window_s // settings.dispersion_s) - 2 if dispersion is not None else 0,
            dispersion_s=float(settings.dispersion_s) if dispersion is not None else 0.0,
        )
    )


def _recent(key: Key, figures: dict[str, dict[Key, float]]) -> float | None:
    """The completions over the short window, where its growth is known too (as the window's:
    absent only where the gauges are); else None, and the planner plans from the window alone."""
    recent = figures.get("completed_recent", {})
    if key in figures.get("growth_recent", {}) or key not in figures["growth"]:
        return recent.get(key)
    return None


class PrometheusCollector:
    """Runs the queries concurrently; prometheus-api-client blocks, so each goes to a thread of
    the collector's own pool, one per query: never the loop's default executor, which the
    Kubernetes client's DNS lookups use (a slow Prometheus would hold every thread there and
    stall all Kubernetes I/O). Each query times out on the HTTP client and in Prometheus.

    The histograms' bucket bounds are read once (and again when the SLOs change or every
    `relearn_s`), so that each cycle asks only for the buckets around the SLOs."""

    def __init__(
        self, url: str, settings: CollectorSettings = CollectorSettings(), timeout_s: float = 10.0, relearn_s: float = 600.0
    ):
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.settings = settings
        self.timeout_s = timeout_s
        self.relearn_s = relearn_s
        # no client-side retries: a down Prometheus must fail the cycle's collection quickly
        self.client = PrometheusConnect(url=url, disable_ssl=not url.startswith("https"), retry=Retry(total=0), timeout=timeout_s)
        self.queries = queries(settings)
        self._learned: tuple[dict[str, set[float]], float] | None = None
        self._without_tpot: set[Key] = set()  # ISVCs said to export no per-request TPOT histogram
        # a cycle's queries all at once; a hung one times out before the next cycle asks again
        self._executor = ThreadPoolExecutor(max_workers=len(self.queries), thread_name_prefix="prometheus")

    def _query(self, promql: str) -> Samples:
        return self.client.custom_query(promql, params={"timeout": f"{self.timeout_s:g}s"})

    async def _ask(self, named: Mapping[str, str], query: Callable[[str], Samples] | None = None) -> dict[str, Samples]:
        names = list(named)
        loop = asyncio.get_running_loop()
        query = query or self._query
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(loop.run_in_executor(self._executor, query, named[n]) for n in names)),
                self.timeout_s + 2,
            )
        except asyncio.TimeoutError:
            raise CollectError(f"Prometheus did not answer within {self.timeout_s:g} s") from None
        except Exception as exc:  # the client raises requests' and its own errors alike
            raise CollectError(f"Prometheus query failed: {exc.__class__.__name__}: {exc}") from None
        return dict(zip(names, answers, strict=True))

    async def _learn_bounds(self, slos_s: dict[str, set[float]]) -> None:
        now = time.monotonic()
        if self._learned is not None and self._learned[0] == slos_s and now - self._learned[1] < self.relearn_s:
            return
        named = {h: f"count by (le) ({histogram_metric(self.settings, h)}_bucket)" for h in HISTOGRAMS if slos_s.get(h)}
        found = await self._ask(named)
        bounds = {
            h: bracketing_bounds([le for s in samples if isinstance(le := _le(s), str)], slos_s[h])
            for h, samples in found.items()
            if samples
        }
        self.queries = queries(self.settings, bounds)
        # vLLM registers its histograms' series at start-up (PrometheusStatLogger, make_per_engine:
        # each labelled child made in __init__), so no series at all is nothing scraped yet, asked
        # again next cycle; one histogram without series beside one with them is not exported
        # (the per-request TPOT before vLLM 0.11): asked again at relearn_s, not every cycle, and
        # queried in full (no bounds) meanwhile should a newer vLLM export it
        self._learned = (slos_s, now) if bounds else None

    async def in_system(self) -> dict[Key, float]:
        """Requests running + waiting now per ISVC (vLLM's two gauges, one query): the queue
        watch's probe between cycles. A sample that is not a usable number leaves its ISVC out."""
        by = f"namespace, {self.settings.isvc_label}"
        promql = f"sum by ({by}) (vllm:num_requests_running) + sum by ({by}) (vllm:num_requests_waiting)"
        samples = (await self._ask({"in_system": promql}))["in_system"]
        unusable: dict[Key, str] = {}
        counts = _by_key(samples, self.settings.isvc_label, "in_system", unusable)
        return {key: count for key, count in counts.items() if key not in unusable}

    async def collect(self, slos_s: dict[str, set[float]] | None = None) -> dict[Key, Observation]:
        """Observations of every ISVC; `slos_s` ({"ttft": {...}, "tpot": {...}} in seconds) lets
        the histogram queries skip buckets no SLO needs."""
        if slos_s:
            await self._learn_bounds(slos_s)
        observed = observations(await self._ask(self.queries), self.settings)
        self._say_without_tpot(observed)
        return observed

    async def history(
        self, span_s: float, step_s: float, slos_s: dict[str, set[float]] | None = None, at: float | None = None
    ) -> list[tuple[float, dict[Key, Observation]]]:
        """What a cycle would have observed every `step_s` over the `span_s` before `at` (unix
        time; None: now), as (seconds before `at`, observations), oldest first, `at` itself left
        to the cycle: each query once, as a range query. What the controller recalls of running
        ISVCs at its start (planner.recall); raises CollectError like collect."""
        if slos_s:
            await self._learn_bounds(slos_s)
        end = math.floor(time.time() if at is None else at)
        start = end - math.floor(span_s / step_s) * step_s

        def ask(promql: str) -> Samples:
            return self.client.custom_query_range(
                promql, _utc(start), _utc(end), f"{step_s:g}s", params={"timeout": f"{self.timeout_s:g}s"}
            )

        answers = await self._ask(self.queries, ask)
        return [(end - t, observations(named, self.settings)) for t, named in instants(answers, start, end - step_s / 2)]

    def _say_without_tpot(self, observed: Mapping[Key, Observation]) -> None:
        """Once per ISVC, that its requests finish with no per-request TPOT histogram (vLLM <
        0.11, or a relabelling that drops it): its ITL SLO's share is not measured, and the
        bias learns from TTFT alone. Said again if it comes back and goes again, or if the ISVC
        leaves the observations and returns: one that left is forgotten, so that ISVCs deleted
        over the controller's life do not pile up here."""
        self._without_tpot &= observed.keys()
        for key, obs in observed.items():
            if obs.tpot_buckets:
                self._without_tpot.discard(key)
            elif obs.avg_out_tokens is not None and key not in self._without_tpot:  # requests finished
                self._without_tpot.add(key)
                log.warning(
                    "%s/%s: no %s series (vLLM < 0.11?): the share of requests within the ITL SLO is not measured, "
                    "and the latency model's bias learns from TTFT alone",
                    *key,
                    self.settings.tpot_metric,
                )


def _utc(unix: float) -> datetime:
    return datetime.fromtimestamp(unix, tz=timezone.utc)
