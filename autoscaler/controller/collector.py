"""Live load of every ISVC from vLLM's metrics in Prometheus: one PromQL query per figure for
all ISVCs at once, grouped by namespace and the ISVC label.

Everything is computed by Prometheus over a trailing window (counter resets of restarted pods
handled by increase()), so the collector keeps no state between cycles and a restarted
controller reads the same figures. Arrivals are completions plus the growth of requests in the
system (running + waiting): completions alone lag a building queue.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..estimation import LoadCounters, estimate_load


@dataclass(frozen=True)
class CollectorSettings:
    window_s: int = 60
    isvc_label: str = "isvc"  # the label your scrape config puts the ISVC name in (see config/)
    itl_metric: str = "vllm:time_per_output_token_seconds"  # vLLM >= 0.10 also: vllm:inter_token_latency_seconds


@dataclass(frozen=True)
class Observation:
    arrival_rate: float  # requests/second over the window
    previous_rate: float  # requests/second over the window before
    avg_in_tokens: float | None  # None: nothing completed in the window
    avg_out_tokens: float | None
    running: float
    waiting: float
    ttft_ms: float | None  # observed means, None without completions
    itl_ms: float | None
    ttft_buckets: tuple[tuple[float, float], ...]  # (upper bound s, cumulative count) over the window
    itl_buckets: tuple[tuple[float, float], ...]


class CollectError(Exception):
    """Prometheus could not be asked (down, timing out, refusing the query)."""


def queries(settings: CollectorSettings) -> dict[str, str]:
    by = f"namespace, {settings.isvc_label}"
    w = f"{settings.window_s}s"

    def increase(metric: str, offset: str = "") -> str:
        return f"sum by ({by}) (increase({metric}[{w}]{offset}))"

    def growth(offset: str = "") -> str:
        return " + ".join(f"sum by ({by}) (delta(vllm:num_requests_{g}[{w}]{offset}))" for g in ("running", "waiting"))

    def mean(histogram: str) -> str:
        return f"{increase(histogram + '_sum')} / {increase(histogram + '_count')}"

    return {
        "completed": increase("vllm:request_success_total"),
        "completed_before": increase("vllm:request_success_total", f" offset {w}"),
        "growth": growth(),
        "growth_before": growth(f" offset {w}"),
        "running": f"sum by ({by}) (vllm:num_requests_running)",
        "waiting": f"sum by ({by}) (vllm:num_requests_waiting)",
        "prompt_tokens": increase("vllm:prompt_tokens_total"),
        "generation_tokens": increase("vllm:generation_tokens_total"),
        "ttft_mean": mean("vllm:time_to_first_token_seconds"),
        "itl_mean": mean(settings.itl_metric),
        "ttft_buckets": f"sum by ({by}, le) (increase(vllm:time_to_first_token_seconds_bucket[{w}]))",
        "itl_buckets": f"sum by ({by}, le) (increase({settings.itl_metric}_bucket[{w}]))",
    }


Key = tuple[str, str]  # namespace, ISVC name
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


def within(buckets: tuple[tuple[float, float], ...], limit_s: float) -> tuple[float, float]:
    """(observations within `limit_s`, all observations), interpolating linearly inside the
    bucket that holds the limit, as histogram_quantile() does (counting only whole buckets
    would read "all within 20 ms" as "none within 40 ms" when the bounds are 10 ms and 50 ms)."""
    if not buckets:
        return 0.0, 0.0
    total = buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if bound >= limit_s:
            if bound == float("inf"):
                return lower_count, total
            share = (limit_s - lower_bound) / (bound - lower_bound)
            return lower_count + (count - lower_count) * share, total
        lower_bound, lower_count = bound, count
    return total, total


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

    def estimate(done: float, growth: float):
        earlier = LoadCounters(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        later = LoadCounters(window, done, 0.0, growth, figure("prompt_tokens"), figure("generation_tokens"))
        return estimate_load(earlier, later)

    now = estimate(figure("completed"), figure("growth"))
    ttft, itl = figures["ttft_mean"].get(key), figures["itl_mean"].get(key)
    return Observation(
        arrival_rate=now.arrival_rate,
        previous_rate=estimate(figure("completed_before"), figure("growth_before")).arrival_rate,
        avg_in_tokens=now.avg_in_tokens,
        avg_out_tokens=now.avg_out_tokens,
        running=figure("running"),
        waiting=figure("waiting"),
        ttft_ms=None if ttft is None else ttft * 1000.0,
        itl_ms=None if itl is None else itl * 1000.0,
        ttft_buckets=ttft_buckets,
        itl_buckets=itl_buckets,
    )


class PrometheusCollector:
    """Runs the queries concurrently; prometheus-api-client blocks, so each goes to a thread."""

    def __init__(self, url: str, settings: CollectorSettings = CollectorSettings(), timeout_s: float = 10.0):
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.settings = settings
        self.timeout_s = timeout_s
        # no client-side retries: a down Prometheus must fail the cycle's collection quickly
        self.client = PrometheusConnect(url=url, disable_ssl=not url.startswith("https"), retry=Retry(total=0), timeout=timeout_s)
        self.queries = queries(settings)

    def _query(self, promql: str) -> Samples:
        return self.client.custom_query(promql, params={"timeout": f"{self.timeout_s:g}s"})

    async def collect(self) -> dict[Key, Observation]:
        names = list(self.queries)
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(asyncio.to_thread(self._query, self.queries[n]) for n in names)), self.timeout_s + 2
            )
        except asyncio.TimeoutError:
            raise CollectError(f"Prometheus did not answer within {self.timeout_s:g} s") from None
        except Exception as exc:  # the client raises requests' and its own errors alike
            raise CollectError(f"Prometheus query failed: {exc.__class__.__name__}: {exc}") from None
        return observations(dict(zip(names, answers, strict=True)), self.settings)
