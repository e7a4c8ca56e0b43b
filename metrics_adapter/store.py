"""The adapter's in-memory series, indexed by label so a selector query touches only matches.

A series is one metric value for one label set in one namespace. Each carries the time its
value was decided: past `stale_after` it is served marked stale, past `max_age` it is not
served at all, so an HPA holds its scale rather than act on old decisions.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Mapping

from .quantity import format_quantity
from .selectors import Operator, Selector

STALE_LABEL = "stale"


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Series:
    metric: str
    namespace: str
    labels: Mapping[str, str]
    value: float
    timestamp: float  # epoch seconds when the value was decided

    @property
    def key(self) -> tuple:
        return (self.metric, self.namespace, tuple(sorted(self.labels.items())))


@dataclass
class _Entry:
    series: Series
    fresh_json: str  # the ExternalMetricValue, rendered once per update
    stale_json: str


@dataclass
class _Table:
    """All series of one metric in one namespace, with a posting list per label value."""

    entries: dict[tuple, _Entry] = field(default_factory=dict)
    postings: dict[str, dict[str, set[tuple]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(set)))


def render_value(series: Series, stale: bool = False) -> str:
    """One ExternalMetricValue as compact JSON."""
    labels = dict(series.labels) | ({STALE_LABEL: "true"} if stale else {})
    return json.dumps(
        {
            "metricName": series.metric,
            "metricLabels": labels,
            "timestamp": rfc3339(series.timestamp),
            "value": format_quantity(series.value),
        },
        separators=(",", ":"),
    )


class MetricStore:
    def __init__(self, stale_after_s: float = 60.0, max_age_s: float = 300.0, clock: Callable[[], float] = time.time):
        if not 0 < stale_after_s <= max_age_s:
            raise ValueError("need 0 < stale_after_s <= max_age_s")
        self.stale_after_s = stale_after_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._tables: dict[tuple[str, str], _Table] = defaultdict(_Table)

    def __len__(self) -> int:
        return sum(len(t.entries) for t in self._tables.values())

    def upsert(self, series: Series) -> None:
        table = self._tables[(series.metric, series.namespace)]
        key = series.key
        if key not in table.entries:
            for name, value in series.labels.items():
                table.postings[name][value].add(key)
        table.entries[key] = _Entry(series, render_value(series), render_value(series, stale=True))

    def remove(self, series: Series) -> None:
        table = self._tables.get((series.metric, series.namespace))
        if table is None or table.entries.pop(series.key, None) is None:
            return
        for name, value in series.labels.items():
            table.postings[name][value].discard(series.key)

    def replace_all(self, series: Iterable[Series]) -> None:
        """A snapshot: everything not in it is forgotten."""
        self._tables = defaultdict(_Table)
        for one in series:
            self.upsert(one)

    def metric_names(self) -> set[str]:
        return {metric for (metric, _), table in self._tables.items() if table.entries}

    def _candidates(self, table: _Table, selector: Selector) -> Iterable[tuple]:
        # equality and `in` requirements narrow the search through the postings, smallest first
        narrowing = []
        for req in selector.requirements:
            if req.operator in (Operator.EQUALS, Operator.IN):
                by_value = table.postings.get(req.key, {})
                narrowing.append(set().union(*(by_value.get(v, ()) for v in req.values)))
        if not narrowing:
            return table.entries.keys()
        narrowing.sort(key=len)
        return narrowing[0].intersection(*narrowing[1:])

    def _served(self, namespace: str, metric: str, selector: Selector) -> Iterator[tuple[_Entry, bool]]:
        """The matching entries young enough to serve, each with whether it is stale."""
        table = self._tables.get((metric, namespace))
        if table is None:
            return
        now = self.clock()
        for key in self._candidates(table, selector):
            entry = table.entries[key]
            age = now - entry.series.timestamp
            if age <= self.max_age_s and selector.matches(entry.series.labels):
                yield entry, age > self.stale_after_s

    def query(self, namespace: str, metric: str, selector: Selector) -> list[str]:
        """Rendered ExternalMetricValue JSON objects of the matching series young enough to serve."""
        return [entry.stale_json if stale else entry.fresh_json for entry, stale in self._served(namespace, metric, selector)]

    def series(self, namespace: str, metric: str, selector: Selector) -> list[Series]:
        """The matching series young enough to serve (stale ones too, as query serves them)."""
        return [entry.series for entry, _ in self._served(namespace, metric, selector)]

    async def items(self, namespace: str, metric: str, selector: Selector) -> list[str]:
        return self.query(namespace, metric, selector)
