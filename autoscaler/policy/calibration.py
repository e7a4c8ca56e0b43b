"""Calibrates the latency targets the optimizer sizes for against measured SLO attainment.

The queueing model predicts mean latencies; users judge the share of requests within the SLO,
and the model leaves out real effects (prefill stalls, length variance). Each control period the
measured share of completed requests within the TTFT and the ITL SLO moves a scale factor on
that target: down at once when the share misses the goal, back up only after it has clearly
beaten the goal for several periods in a row (relaxing too eagerly makes a limit cycle of
scale-down, overload, scale-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class _Scale:
    """One target's scale factor and how many comfortable periods in a row it has seen."""

    value: float = 1.0
    comfortable: int = 0


@dataclass
class SloCalibration:
    goal: float = 0.95  # share of requests that should meet each SLO
    tighten: float = 0.85  # factor applied to the target after a missed period
    relax: float = 1.05  # factor applied after a period comfortably above the goal
    comfort: float = 0.03  # 'comfortably above' = goal + comfort
    floor: float = 0.3
    patience: int = 4  # comfortable periods in a row before relaxing
    min_requests: int = 20  # fewer completions in a period say too little to act on
    ttft: _Scale = field(default_factory=lambda: _Scale())
    itl: _Scale = field(default_factory=lambda: _Scale())

    def _step(self, scale: _Scale, met: int, completed: int) -> None:
        share = met / completed
        if share < self.goal:
            scale.value = max(scale.value * self.tighten, self.floor)
            scale.comfortable = 0
        elif share > self.goal + self.comfort:
            scale.comfortable += 1
            if scale.comfortable >= self.patience:
                scale.value = min(scale.value * self.relax, 1.0)
        else:
            scale.comfortable = 0

    def update(self, completed: int, ttft_met: int, itl_met: int) -> tuple[float, float]:
        """Feed one period's counts; returns the (TTFT, ITL) scales to size with."""
        if completed >= self.min_requests:
            self._step(self.ttft, ttft_met, completed)
            self._step(self.itl, itl_met, completed)
        return self.ttft.value, self.itl.value
