"""Chooses one candidate per server: the cheapest (unlimited capacity) or a greedy, priority- and
regret-ordered assignment under per-type GPU capacity, then best-effort shares of what is left.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from itertools import groupby

from .domain import Allocation, CurrentAllocation, SaturationPolicy, System

ACCELERATOR_CHANGE_PENALTY = 0.1  # share of old+new cost charged for moving to another GPU type
# Inferno's reading of a server with no current allocation: an empty one (no GPU type, no
# replicas, no cost), so starting it is a GPU-type change and costs 1.1 x its cost
NO_ALLOCATION = CurrentAllocation(accelerator="", num_replicas=0)


def transition_value(candidate: Allocation, current: CurrentAllocation | None) -> float:
    """What a move from the current allocation (None: none yet) to `candidate` is worth paying for."""
    if current is None:
        current = NO_ALLOCATION
    if current.accelerator == candidate.accelerator:
        return 0.0 if current.num_replicas == candidate.num_replicas else candidate.cost - current.cost
    return ACCELERATOR_CHANGE_PENALTY * (current.cost + candidate.cost) + candidate.cost - current.cost


def _by_value(alloc: Allocation) -> tuple:
    return (alloc.value, alloc.cost, alloc.accelerator)


def choose_unlimited(options: Mapping[str, list[Allocation]]) -> dict[str, Allocation]:
    return {name: min(allocs, key=_by_value) for name, allocs in options.items() if allocs}


@dataclass
class _Entry:
    """A server waiting in the greedy queue with its options, cheapest first."""

    name: str
    priority: int
    options: list[Allocation]
    index: int = 0
    regret: float = field(init=False)

    def __post_init__(self):
        self._update_regret()

    def _update_regret(self) -> None:
        # what it costs this server to lose its current option: the step to its next one
        nxt = self.index + 1
        self.regret = self.options[nxt].value - self.options[self.index].value if nxt < len(self.options) else math.inf

    def advance(self) -> bool:
        self.index += 1
        if self.index == len(self.options):
            return False
        self._update_regret()
        return True

    @property
    def order(self) -> tuple:
        return (self.priority, -self.regret, -self.options[self.index].value, self.name)

    def __lt__(self, other: _Entry) -> bool:
        return self.order < other.order


class GreedyAllocator:
    """Inferno's greedy assignment under capacity, with deterministic tie-breaking by name."""

    def __init__(self, system: System, units_per_replica: Callable[[str, str], int]):
        self.system = system
        self.units_per_replica = units_per_replica
        self.available = dict(system.capacity)
        self.chosen: dict[str, Allocation] = {}

    def _type_of(self, alloc: Allocation) -> str:
        return self.system.accelerators[alloc.accelerator].type

    def _take(self, alloc: Allocation, replicas: int) -> None:
        self.available[self._type_of(alloc)] -= replicas * self.units_per_replica(alloc.server, alloc.accelerator)

    def _replicas_available(self, alloc: Allocation) -> int:
        return self.available.get(self._type_of(alloc), 0) // self.units_per_replica(alloc.server, alloc.accelerator)

    def run(self, options: Mapping[str, list[Allocation]], priorities: Mapping[str, int]) -> dict[str, Allocation]:
        entries = sorted(
            _Entry(name, priorities[name], sorted(allocs, key=_by_value)) for name, allocs in options.items() if allocs
        )
        policy = self.system.optimizer.saturation_policy
        if self.system.optimizer.delayed_best_effort:
            self._best_effort(self._meet_slos(entries), policy)
        else:
            for _, group in groupby(entries, key=lambda e: e.priority):
                self._best_effort(self._meet_slos(list(group)), policy)
        return self.chosen

    def _meet_slos(self, entries: list[_Entry]) -> list[_Entry]:
        """Give each server its best option that fits; return those for which none fits."""
        heap = list(entries)
        heapq.heapify(heap)
        unallocated = []
        while heap:
            entry = heapq.heappop(heap)
            alloc = entry.options[entry.index]
            if self._replicas_available(alloc) >= alloc.num_replicas:
                self._take(alloc, alloc.num_replicas)
                self.chosen[entry.name] = alloc
            elif entry.advance():
                heapq.heappush(heap, entry)
            else:
                unallocated.append(entry)
        return unallocated

    def _best_effort(self, entries: list[_Entry], policy: SaturationPolicy) -> None:
        if policy is SaturationPolicy.PRIORITY_EXHAUSTIVE:
            self._fill_in_turn(entries)
        elif policy is SaturationPolicy.PRIORITY_ROUND_ROBIN:
            for _, group in groupby(entries, key=lambda e: e.priority):
                self._share_round_robin(list(group))
        elif policy is SaturationPolicy.ROUND_ROBIN:
            self._share_round_robin(entries)

    def _grant(self, entry: _Entry, alloc: Allocation, replicas: int) -> None:
        # fewer replicas than the SLOs need: cost scales, latencies keep their SLO-sized figures
        factor = replicas / alloc.num_replicas
        self.chosen[entry.name] = replace(
            alloc, num_replicas=replicas, cost=alloc.cost * factor, value=alloc.value * factor, best_effort=True
        )

    def _fill_in_turn(self, entries: list[_Entry]) -> None:
        """Each server in turn takes as much as it can of its cheapest type with room."""
        for entry in entries:
            for alloc in entry.options:
                replicas = min(self._replicas_available(alloc), alloc.num_replicas)
                if replicas > 0:
                    self._take(alloc, replicas)
                    self._grant(entry, alloc, replicas)
                    break

    def _share_round_robin(self, entries: list[_Entry]) -> None:
        """One replica per server per round, each on its cheapest type that had room at its first turn."""
        picked: dict[str, Allocation] = {}
        granted: dict[str, int] = {}
        active = list(entries)
        while active:
            still = []
            for entry in active:
                alloc = picked.get(entry.name)
                if alloc is None:
                    alloc = next((a for a in entry.options if self._replicas_available(a) >= 1), None)
                    if alloc is None:
                        continue
                    picked[entry.name] = alloc
                if granted.get(entry.name, 0) < alloc.num_replicas and self._replicas_available(alloc) >= 1:
                    self._take(alloc, 1)
                    granted[entry.name] = granted.get(entry.name, 0) + 1
                    still.append(entry)
            active = still
        for entry in entries:
            if entry.name in granted:
                self._grant(entry, picked[entry.name], granted[entry.name])
