"""`--source prometheus`: answer each request with a PromQL query, as prometheus-adapter does.

External metric `desired_replicas` in namespace `ns` with a selector becomes
`inference_autoscaler_desired_replicas{namespace="ns", ...}`; selector requirements Prometheus
can express become matchers, and every answer is filtered by the full selector as well.
The client library is blocking, so each query runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re

from autoscaler.decision_metrics import FIGURES, PROMETHEUS_PREFIX

from .api import SourceUnavailable
from .selectors import Operator, Requirement, Selector
from .store import Series, render_value

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
    def __init__(self, url: str):
        from prometheus_api_client import PrometheusConnect

        self.url = url
        self._prometheus = PrometheusConnect(url=url, disable_ssl=True)

    async def items(self, namespace: str, metric: str, selector: Selector) -> list[str]:
        if metric not in FIGURES:
            return []
        try:
            result = await asyncio.to_thread(self._prometheus.custom_query, promql(metric, namespace, selector))
        except Exception as exc:  # the client raises its own and requests' errors alike
            raise SourceUnavailable(f"{self.url}: {exc}") from exc
        items = []
        for sample in result:
            labels = {k: v for k, v in sample["metric"].items() if k not in SCRAPE_LABELS}
            if not selector.matches(labels):
                continue
            at, value = sample["value"]
            items.append(render_value(Series(metric, namespace, labels, float(value), float(at))))
        return items

    def metric_names(self) -> set[str]:
        return set(FIGURES)
