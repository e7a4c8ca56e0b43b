"""The Kubernetes HPA on a vLLM load metric: requests running plus waiting per ready pod.

Every sync (15 s): desired = ceil(ready * value / target) unless the ratio is within the 10%
tolerance; scale-up limited to the larger of doubling and +4 pods per sync (the default
policies); scale-down follows the highest recommendation of the last 300 s (stabilisation),
the replicas the target had at the HPA's first sync among them (the HPA controller's
recordInitialRecommendation, pkg/controller/podautoscaler/horizontal.go: a new HPA does not
scale its target below what it found for a whole window).
"""

from __future__ import annotations

import math
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


class HpaBehavior:
    """What an HPA does with one target's recommendations, whatever computes them: scale-down
    follows the highest recommendation of the stabilisation window, scale-up is limited per
    sync. Ours in the simulator plays the HPA the controller writes through this too, whose
    scale-down window may change between syncs (manifests.hpa: shorter while a model with no
    profile is identified). As the HPA controller keeps them (horizontal.go,
    stabilizeRecommendationWithBehaviors): each sync's recommendation is recorded with its time,
    in place of one older than the window then in force, else appended; only those within the
    window in force at a sync count, so a window shortened and lengthened again finds those of
    the longer window not yet overwritten."""

    def __init__(self, settings: HpaSettings = HpaSettings()):
        self.settings = settings
        self._history: list[tuple[float, int]] = []

    def replicas(self, now: float, current: int, recommended: int, scale_down_s: float | None = None) -> int:
        """`scale_down_s`: the stabilisation window in force at this sync (None: the settings')."""
        s = self.settings
        cutoff = now - (s.scale_down_stabilization_s if scale_down_s is None else scale_down_s)
        if not self._history:  # the first sync: the current count is the first recommendation
            self._history.append((now, current))
        # a recommendation exactly one window old still counts (the controller's is strictly
        # newer; its timestamps jitter where the simulator's syncs fall on the window's multiples:
        # kept as before, so that no earlier figure moves)
        highest = max([r for t, r in self._history if t >= cutoff], default=recommended)
        old = [i for i, (t, _) in enumerate(self._history) if t < cutoff]
        if old:  # the last one found older than the window is overwritten, as the controller does
            self._history[old[-1]] = (now, recommended)
        else:
            self._history.append((now, recommended))
        if recommended < current:
            recommended = min(current, max(highest, recommended))
        up_limit = max(math.floor(current * (1 + s.scale_up_percent / 100.0)), current + s.scale_up_pods)
        return min(recommended, up_limit)


class HorizontalPodAutoscaler:
    name = "hpa"

    def __init__(self, metric_targets: Mapping[int, float], settings: HpaSettings = HpaSettings()):
        self.targets = metric_targets
        self.settings = settings
        self.period_s = settings.sync_period_s
        self._behavior: dict[int, HpaBehavior] = {}

    def decide(self, now: float, views: list[IsvcView]) -> dict[int, Decision]:
        decisions = {}
        for index, view in enumerate(views):
            ratio = (view.in_flight / max(view.ready, 1)) / self.targets[index]
            if view.ready == 0 or abs(ratio - 1.0) <= self.settings.tolerance:
                desired = view.replicas
            else:
                desired = math.ceil(view.ready * ratio)
            behavior = self._behavior.setdefault(index, HpaBehavior(self.settings))
            decisions[index] = Decision(behavior.replicas(now, view.replicas, desired))
        return decisions
