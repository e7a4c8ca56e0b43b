"""The optimizer's entry point: a System in, one Solution out. Pure: no I/O, no clock."""

from __future__ import annotations

from .allocation import GreedyAllocator, choose_unlimited, transition_value
from .domain import Solution, System
from .sizing import size_candidates


def units_per_replica(system: System):
    """Cards of the accelerator's type one replica of a server's model holds."""
    models = {server.name: server.model for server in system.servers}

    def units(server_name: str, accelerator: str) -> int:
        profile = system.profiles[(models[server_name], accelerator)]
        return profile.acc_count * system.accelerators[accelerator].multiplicity

    return units


def solve(system: System) -> Solution:
    options = size_candidates(system)
    for server in system.servers:
        for alloc in options[server.name]:
            alloc.value = transition_value(alloc, server.current)
    if system.optimizer.unlimited:
        chosen = choose_unlimited(options)
    else:
        priorities = {s.name: system.classes[s.class_name].priority for s in system.servers}
        chosen = GreedyAllocator(system, units_per_replica(system)).run(options, priorities)
    idle = tuple(s.name for s in system.servers if s.min_replicas == 0 and s.load.is_zero)
    unallocated = tuple(s.name for s in system.servers if s.name not in chosen and s.name not in idle)
    ordered = {s.name: chosen[s.name] for s in system.servers if s.name in chosen}
    return Solution(allocations=ordered, unallocated=unallocated, idle=idle)
