"""The Kubernetes HPA on a vLLM load metric: requests running plus waiting per ready pod.

Every sync (15 s): desired = ceil(ready * value / target) unless the ratio is within the 10%
tolerance; scale-up limited to the larger of doubling and +4 pods per sync (the default
policies); scale-down follows the highest recommendation of the last 300 s (stabilisation).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from ..engine import Decision, IsvcView


@dataclass(frozen=True)
class HpaSettings:
    sync_period_s: float = 15.0
    tolerance: float = 0.1
    scale_down_stabilization_s: float = 300.0
    scale_up_percent: float = 100.0
    scale_up_pods: int = 4


class HorizontalPodAutoscaler:
    name = "hpa"

    def __init__(self, metric_targets: Mapping[int, float], settings: HpaSettings = HpaSettings()):
        self.targets = metric_targets
        self.settings = settings
        self.period_s = settings.sync_period_s
        self._recommendations: dict[int, deque] = {}

    def decide(self, now: float, views: list[IsvcView]) -> dict[int, Decision]:
        s = self.settings
        decisions = {}
        for index, view in enumerate(views):
            current = view.replicas
            ratio = (view.in_flight / max(view.ready, 1)) / self.targets[index]
            if view.ready == 0 or abs(ratio - 1.0) <= s.tolerance:
                desired = current
            else:
                desired = math.ceil(view.ready * ratio)
            history = self._recommendations.setdefault(index, deque())
            history.append((now, desired))
            while history[0][0] < now - s.scale_down_stabilization_s:
                history.popleft()
            if desired < current:
                desired = min(current, max(r for _, r in history))
            up_limit = max(math.floor(current * (1 + s.scale_up_percent / 100.0)), current + s.scale_up_pods)
            decisions[index] = Decision(min(desired, up_limit))
        return decisions
