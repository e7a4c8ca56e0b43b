"""Pure: where one policy stands against a family of tuned baselines, on attainment vs GPU-hours.

A family is one baseline run over a grid of its tuning knob; each run is a point (GPU-hours,
SLO attainment). Its frontier keeps the points no other point beats on both, and is read
between points by linear interpolation (the knob moves both smoothly). Against it, ours gets
two figures: the attainment the family reaches with ours' GPU-hours, and the GPU-hours it
needs for ours' attainment. Either is None where the frontier does not reach that far.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Point:
    gpu_hours: float
    attainment: float
    knob: float | None = None  # the tuning that gave it, where a family has one


def frontier(points: Iterable[Point]) -> list[Point]:
    """The Pareto frontier, cheapest first: each point attains more than every cheaper one."""
    front: list[Point] = []
    for point in sorted(points, key=lambda p: (p.gpu_hours, -p.attainment)):
        if not front or point.attainment > front[-1].attainment:
            front.append(point)
    return front


def attainment_at(front: list[Point], gpu_hours: float) -> float | None:
    """The best attainment the frontier reaches within `gpu_hours`; None below its cheapest point."""
    if not front or gpu_hours < front[0].gpu_hours:
        return None
    xs = [p.gpu_hours for p in front]
    return float(np.interp(gpu_hours, xs, [p.attainment for p in front]))


def gpu_hours_for(front: list[Point], attainment: float) -> float | None:
    """The GPU-hours the frontier needs to reach `attainment` (its cheapest point's at least);
    None where no point reaches it."""
    if not front or attainment > front[-1].attainment:
        return None
    if attainment <= front[0].attainment:
        return front[0].gpu_hours
    return float(np.interp(attainment, [p.attainment for p in front], [p.gpu_hours for p in front]))
