"""Static peak provisioning: the replica count for the peak load, held all along."""

from __future__ import annotations

from ..engine import Decision, IsvcView


class StaticPolicy:
    name = "static-peak"
    period_s = 3600.0  # nothing to revisit

    def decide(self, now: float, views: list[IsvcView]) -> dict[int, Decision]:
        return {}
