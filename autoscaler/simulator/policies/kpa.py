"""Knative's Pod Autoscaler (KPA) on request concurrency, as its defaults configure it.

Every tick (2 s) it averages the in-flight requests over a stable (60 s) and a panic (6 s)
window and divides by the per-pod target times the utilisation target (70%). When the panic
window asks for twice the ready pods or more, it panics: for a stable window it follows the
panic figure and never scales down. Scale rates are bounded (up x1000, down /2 per tick).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import islice

from ..engine import SAMPLE_PERIOD_S, Decision, IsvcView


@dataclass(frozen=True)
class KpaSettings:
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    target_utilization: float = 0.7
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    tick_s: float = 2.0


def window_average(samples, window_s: float) -> float:
    count = max(int(round(window_s / SAMPLE_PERIOD_S)), 1)
    recent = list(islice(reversed(samples), count))
    return sum(recent) / len(recent) if recent else 0.0


class KnativePodAutoscaler:
    name = "knative-kpa"

    def __init__(self, concurrency_targets: Mapping[int, float], settings: KpaSettings = KpaSettings()):
        self.targets = concurrency_targets
        self.settings = settings
        self.period_s = settings.tick_s
        self._panic_until: dict[int, float] = {}
        self._last: dict[int, int] = {}

    def decide(self, now: float, views: list[IsvcView]) -> dict[int, Decision]:
        s = self.settings
        decisions = {}
        for index, view in enumerate(views):
            per_pod = self.targets[index] * s.target_utilization
            ready = max(view.ready, 1)
            stable = math.ceil(window_average(view.samples, s.stable_window_s) / per_pod)
            panic = math.ceil(window_average(view.samples, s.panic_window_s) / per_pod)
            if panic / ready >= s.panic_threshold:
                self._panic_until[index] = now + s.stable_window_s
            if now < self._panic_until.get(index, -math.inf):
                desired = max(panic, self._last.get(index, view.replicas))
            else:
                desired = stable
            desired = min(desired, math.ceil(ready * s.max_scale_up_rate))
            desired = max(desired, math.floor(ready / s.max_scale_down_rate))
            self._last[index] = desired
            decisions[index] = Decision(desired)
        return decisions
