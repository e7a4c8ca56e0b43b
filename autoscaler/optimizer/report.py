"""Renders a Solution: Inferno's solution-data.json shape, or a table for people."""

from __future__ import annotations

import json
from collections import defaultdict

from .domain import Server, Solution, System
from .sizing import allowed_accelerators


def _number(value: float) -> float | int:
    # Go's encoder prints whole float32 values without a fraction ("cost": 92); so do we
    return int(value) if float(value).is_integer() else value


def _load_document(server: Server) -> dict:
    load = server.load
    return {
        "arrivalRate": _number(load.arrival_rate_rpm),
        "avgInTokens": load.avg_in_tokens,
        "avgOutTokens": load.avg_out_tokens,
    }


def _listed_idle(system: System, solution: Solution) -> list[str]:
    """Idle servers Inferno lists in unlimited mode: there its zero-load option, an empty
    allocation of value 0, is every such server's cheapest. Without capacity limits it is chosen
    for each server with a profile it may run on; the greedy (limited) solve never places it."""
    if not system.optimizer.unlimited:
        return []
    servers = {s.name: s for s in system.servers}
    return [name for name in solution.idle if allowed_accelerators(system, servers[name])]


def solution_document(system: System, solution: Solution) -> dict:
    servers = {s.name: s for s in system.servers}
    allocations = {}
    for name in solution.allocations:
        alloc = solution.allocations[name]
        allocations[name] = {
            "accelerator": alloc.accelerator,
            "numReplicas": alloc.num_replicas,
            "maxBatch": alloc.max_batch,
            "cost": _number(alloc.cost),
            "itlAverage": _number(alloc.itl_ms),
            "ttftAverage": _number(alloc.ttft_ms),
            "load": _load_document(servers[name]),
        }
    for name in _listed_idle(system, solution):
        allocations[name] = {
            "accelerator": "",
            "numReplicas": 0,
            "maxBatch": 0,
            "cost": 0,
            "itlAverage": 0,
            "ttftAverage": 0,
            "load": _load_document(servers[name]),
        }
    # Go's encoder writes map keys sorted
    return {"allocations": dict(sorted(allocations.items()))}


def solution_json(system: System, solution: Solution) -> str:
    return json.dumps(solution_document(system, solution), indent=4)


def _slo(value: float) -> str:
    return f"{value:g}" if value > 0 else "-"


def solution_table(system: System, solution: Solution) -> str:
    header = ("server", "class", "model", "load rpm", "accelerator", "replicas", "batch", "cost", "ITL ms (SLO)", "TTFT ms (SLO)")
    rows = []
    for server in system.servers:
        target = system.classes[server.class_name].targets[server.model]
        alloc = solution.allocations.get(server.name)
        common = (server.name, server.class_name, server.model, f"{server.load.arrival_rate_rpm:g}")
        if alloc is None:
            status = "idle" if server.name in solution.idle else "UNALLOCATED"
            rows.append(common + (status, "0", "-", "0", "-", "-"))
            continue
        mark = "*" if alloc.best_effort else ""
        rows.append(
            common
            + (
                alloc.accelerator + mark,
                str(alloc.num_replicas),
                str(alloc.max_batch),
                f"{alloc.cost:g}",
                f"{alloc.itl_ms:.2f} ({_slo(target.itl_ms)})",
                f"{alloc.ttft_ms:.1f} ({_slo(target.ttft_ms)})",
            )
        )
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    numeric = {3, 5, 6, 7}

    def fmt(cells: tuple[str, ...]) -> str:
        padded = (c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]

    used: dict[str, int] = defaultdict(int)
    models = {s.name: s.model for s in system.servers}
    for alloc in solution.allocations.values():
        acc = system.accelerators[alloc.accelerator]
        profile = system.profiles[(models[alloc.server], alloc.accelerator)]
        used[acc.type] += alloc.num_replicas * profile.acc_count * acc.multiplicity
    usage = ", ".join(f"{t} {used[t]}/{system.capacity.get(t, 0)}" for t in sorted(used))
    lines.append("")
    lines.append(f"total cost {solution.total_cost:g} cents/h for {len(solution.allocations)} of {len(system.servers)} servers")
    lines.append(f"GPUs used/capacity: {usage or 'none'}")
    if any(a.best_effort for a in solution.allocations.values()):
        lines.append(
            "* best effort: capacity ran out, fewer replicas than the SLOs need (latencies shown are at the SLO-sized count)"
        )
    if solution.unallocated:
        lines.append(f"unallocated (no capacity for any option that meets the SLOs): {', '.join(solution.unallocated)}")
    return "\n".join(lines)
