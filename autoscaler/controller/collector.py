"""Live load of every ISVC from vLLM's metrics in Prometheus: one PromQL query per figure for
all ISVCs at once, grouped by namespace and the ISVC label.

Everything is computed by Prometheus over a trailing window (counter resets of restarted pods
handled by increase()), so the collector keeps no state between cycles and a restarted
controller reads the same figures. What is computed from the figures (arrivals, means) is
policy.observation.observe, which the simulator's observations go through too.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..optimizer.domain import Catalog
from ..policy.observation import WINDOW_S, Key, Observation, WindowFigures, observe


@dataclass(frozen=True)
class CollectorSettings:
    window_s: int = WINDOW_S
    isvc_label: str = "isvc"  # the label your scrape config puts the ISVC name in (see config/)
    itl_metric: str = "vllm:time_per_output_token_seconds"  # vLLM >= 0.10 also: vllm:inter_token_latency_seconds


class CollectError(Exception):
    """Prometheus could not be asked (down, timing out, refusing the query)."""


HISTOGRAMS = ("ttft", "itl")


def histogram_metric(settings: CollectorSettings, histogram: str) -> str:
    return "vllm:time_to_first_token_seconds" if histogram == "ttft" else settings.itl_metric


def queries(settings: CollectorSettings, bucket_bounds: Mapping[str, str] | None = None) -> dict[str, str]:
    """The PromQL of each figure, each for all ISVCs. `bucket_bounds` limits a histogram's
    buckets to the `le` values given as a regex (those around the SLOs: see bracketing_bounds);
    the +Inf bucket doubles as the completion count for the mean."""
    by = f"namespace, {settings.isvc_label}"
    w = f"{settings.window_s}s"
    bucket_bounds = bucket_bounds or {}

    def increase(metric: str, offset: str = "") -> str:
        return f"sum by ({by}) (increase({metric}[{w}]{offset}))"

    def growth(offset: str = "") -> str:
        return " + ".join(f"sum by ({by}) (delta(vllm:num_requests_{g}[{w}]{offset}))" for g in ("running", "waiting"))

    def buckets(histogram: str) -> str:
        literal = bucket_bounds.get(histogram, "").replace("\\", "\\\\")  # a PromQL string: backslashes doubled
        matcher = f'{{le=~"{literal}"}}' if histogram in bucket_bounds else ""
        return f"sum by ({by}, le) (increase({histogram_metric(settings, histogram)}_bucket{matcher}[{w}]))"

    return {
        "completed": increase("vllm:request_success_total"),
        "completed_before": increase("vllm:request_success_total", f" offset {w}"),
        "growth": growth(),
        "growth_before": growth(f" offset {w}"),
        "running": f"sum by ({by}) (vllm:num_requests_running)",
        "waiting": f"sum by ({by}) (vllm:num_requests_waiting)",
        "prompt_tokens": increase("vllm:prompt_tokens_total"),
        "generation_tokens": increase("vllm:generation_tokens_total"),
        "ttft_sum": increase("vllm:time_to_first_token_seconds_sum"),
        "itl_sum": increase(settings.itl_metric + "_sum"),
        "ttft_buckets": buckets("ttft"),
        "itl_buckets": buckets("itl"),
    }


def slo_seconds(catalog: Catalog) -> dict[str, set[float]]:
    """Every TTFT and ITL SLO of the service classes, in seconds (histogram units)."""
    targets = [t for cls in catalog.classes.values() for t in cls.targets.values()]
    return {"ttft": {t.ttft_ms / 1000.0 for t in targets if t.ttft_ms}, "itl": {t.itl_ms / 1000.0 for t in targets if t.itl_ms}}


def bracketing_bounds(bounds: list[str], slos_s: set[float]) -> str:
    """A regex of the bucket bounds that `within` needs for these SLOs: for each SLO the
    largest bound below it and the smallest at or above it, and +Inf. A histogram of 20+
    buckets then costs Prometheus a handful per ISVC."""
    numeric = sorted((float(b), b) for b in bounds)
    keep = {b for value, b in numeric if value == float("inf")}
    for slo in slos_s:
        below = [b for value, b in numeric if value < slo]
        above = [b for value, b in numeric if value >= slo]
        keep.update(below[-1:] + above[:1])
    return "|".join(sorted(re.escape(b) for b in keep))


Samples = list[dict]  # Prometheus instant-vector result: [{"metric": {...}, "value": [t, "v"]}]


def _by_key(samples: Samples, label: str) -> dict[Key, float]:
    result = {}
    for sample in samples:
        metric = sample.get("metric") or {}
        value = float(sample["value"][1])
        if math.isfinite(value):
            result[(metric.get("namespace", ""), metric.get(label, ""))] = value
    return result


def _buckets(samples: Samples, label: str) -> dict[Key, tuple[tuple[float, float], ...]]:
    grouped: dict[Key, list[tuple[float, float]]] = {}
    for sample in samples:
        metric = sample.get("metric") or {}
        key = (metric.get("namespace", ""), metric.get(label, ""))
        grouped.setdefault(key, []).append((float(metric.get("le", "inf")), float(sample["value"][1])))
    return {key: tuple(sorted(pairs)) for key, pairs in grouped.items()}


def observations(results: Mapping[str, Samples], settings: CollectorSettings) -> dict[Key, Observation]:
    """One Observation per ISVC that has its completion counter in Prometheus; an ISVC absent
    here has no data this cycle (the planner keeps its last decision)."""
    label = settings.isvc_label
    figures = {name: _by_key(results.get(name, []), label) for name in queries(settings) if not name.endswith("buckets")}
    ttft_buckets = _buckets(results.get("ttft_buckets", []), label)
    itl_buckets = _buckets(results.get("itl_buckets", []), label)
    window = float(settings.window_s)
    return {
        key: _observation(key, figures, ttft_buckets.get(key, ()), itl_buckets.get(key, ()), window)
        for key in figures["completed"]
    }


def _observation(key: Key, figures: dict[str, dict[Key, float]], ttft_buckets, itl_buckets, window: float) -> Observation:
    def figure(name: str) -> float:
        return figures[name].get(key, 0.0)

    return observe(
        WindowFigures(
            window_s=window,
            completed=figure("completed"),
            growth=figure("growth"),
            completed_before=figures["completed_before"].get(key),
            growth_before=figure("growth_before"),
            running=figure("running"),
            waiting=figure("waiting"),
            prompt_tokens=figure("prompt_tokens"),
            generation_tokens=figure("generation_tokens"),
            ttft_sum=figures["ttft_sum"].get(key),
            itl_sum=figures["itl_sum"].get(key),
            ttft_buckets=ttft_buckets,
            itl_buckets=itl_buckets,
        )
    )


class PrometheusCollector:
    """Runs the queries concurrently; prometheus-api-client blocks, so each goes to a thread.

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

    def _query(self, promql: str) -> Samples:
        return self.client.custom_query(promql, params={"timeout": f"{self.timeout_s:g}s"})

    async def _ask(self, named: Mapping[str, str]) -> dict[str, Samples]:
        names = list(named)
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(asyncio.to_thread(self._query, named[n]) for n in names)), self.timeout_s + 2
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
            h: bracketing_bounds([s["metric"]["le"] for s in samples], slos_s[h]) for h, samples in found.items() if samples
        }
        self.queries = queries(self.settings, bounds)
        self._learned = (slos_s, now) if len(bounds) == len(named) else None  # no series yet: ask again next cycle

    async def collect(self, slos_s: dict[str, set[float]] | None = None) -> dict[Key, Observation]:
        """Observations of every ISVC; `slos_s` ({"ttft": {...}, "itl": {...}} in seconds) lets
        the histogram queries skip buckets no SLO needs."""
        if slos_s:
            await self._learn_bounds(slos_s)
        return observations(await self._ask(self.queries), self.settings)
