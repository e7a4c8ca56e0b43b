"""`--source prometheus`: answer each request with a PromQL query, as prometheus-adapter does.

External metric `desired_replicas` in namespace `ns` with a selector becomes
`inference_autoscaler_desired_replicas{namespace="ns", ...}`; selector requirements Prometheus
can express become matchers, and every answer is filtered by the full selector as well.
The client library is blocking, so each query runs in a thread of the source's own bounded pool
(never the loop's default executor, which the review client's DNS lookups need), and times out.
A sample that is not a finite number in range is skipped with an error line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor

from autoscaler.decision_metrics import FIGURES, PROMETHEUS_PREFIX
from autoscaler.limits import MAX_MAGNITUDE, finite_problem

from .api import SourceUnavailable
from .selectors import Operator, Requirement, Selector
from .store import Series, render_value

log = logging.getLogger(__name__)
PROMETHEUS_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
SCRAPE_LABELS = {"__name__", "namespace", "job", "instance"}


def _quote(value: str) -> str:
    return json.dumps(value)  # a PromQL string literal takes JSON's escapes


def _matcher(req: Requirement) -> str | None:
    if not PROMETHEUS_LABEL.match(req.key):
        return None  # not a Prometheus label name: leave it to the filter
    alternatives = "|".join(re.escape(v) for v in req.values)
    return {
        Operator.EQUALS: f"{req.key}={_quote(req.values[0]) if req.values else _quote('')}",
        Operator.NOT_EQUALS: f"{req.key}!={_quote(req.values[0]) if req.values else _quote('')}",
        Operator.IN: f"{req.key}=~{_quote(alternatives)}",
        Operator.NOT_IN: f"{req.key}!~{_quote(alternatives)}",
        Operator.EXISTS: f'{req.key}!=""',
        Operator.DOES_NOT_EXIST: f'{req.key}=""',
    }.get(req.operator)


def promql(metric: str, namespace: str, selector: Selector) -> str:
    matchers = [f"namespace={_quote(namespace)}"] + [m for r in selector.requirements if (m := _matcher(r))]
    return f"{PROMETHEUS_PREFIX}{metric}{{{','.join(matchers)}}}"


class PrometheusSource:
    def __init__(self, url: str, timeout_s: float = 5.0, concurrency: int = 8):
        from prometheus_api_client import PrometheusConnect
        from urllib3.util.retry import Retry

        self.url = url
        self.timeout_s = timeout_s
        # no client-side retries: the HPA asks again, and a slow Prometheus must answer 503 quickly
        self._prometheus = PrometheusConnect(url=url, disable_ssl=True, retry=Retry(total=0), timeout=timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="prometheus")

    async def items(self, namespace: str, metric: str, selector: Selector) -> list[str]:
        if metric not in FIGURES:
            return []
        query = promql(metric, namespace, selector)
        loop = asyncio.get_running_loop()
        try:
            # the wait for a free thread counts too: a backlog behind a slow Prometheus is a 503
            result = await asyncio.wait_for(
                loop.run_in_executor(self._executor, self._prometheus.custom_query, query), self.timeout_s
            )
        except asyncio.TimeoutError:
            raise SourceUnavailable(f"{self.url}: no answer within {self.timeout_s:g} s") from None
        except Exception as exc:  # the client raises its own and requests' errors alike
            raise SourceUnavailable(f"{self.url}: {exc}") from exc
        items, unusable = [], 0
        for sample in result if isinstance(result, list) else ():
            series = _series(sample, metric, namespace)
            if series is None:
                unusable += 1
            elif selector.matches(series.labels):
                items.append(render_value(series))
        if unusable:
            log.error("%s: %d unusable samples for %s skipped (not finite or out of range)", self.url, unusable, query)
        return items

    def metric_names(self) -> set[str]:
        return set(FIGURES)


def _series(sample: object, metric: str, namespace: str) -> Series | None:
    """The sample as a series, or None when it is malformed or its value or time is not finite
    and in range (a NaN would otherwise end the request in a 500)."""
    try:
        labels = {k: str(v) for k, v in sample["metric"].items() if k not in SCRAPE_LABELS}  # type: ignore[index]
        at, value = (float(x) for x in sample["value"])  # type: ignore[index]
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    if finite_problem(value, -MAX_MAGNITUDE) or finite_problem(at):
        return None
    return Series(metric, namespace, labels, value, at)
