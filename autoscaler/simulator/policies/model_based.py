"""Our policy: estimate each ISVC's load, run the optimizer over all of them under the cluster's
GPU capacity, and apply GPU type, replicas and batch size.

The queueing model sizes for mean latencies and leaves out effects such as other requests'
prefills stalling a batch, while SLO attainment counts requests. So measured attainment (what
vLLM's TTFT and ITL histogram buckets give a collector) calibrates the target the model sizes
for: tighter while an ISVC misses its attainment goal, back toward the SLO while it beats it.

Guards a controller needs: a rise in load beyond Poisson noise is planned for the time new
replicas take to come up; scale-down follows the highest decision of the last five minutes; a
batch-size change alone (a new revision, so a cold start) waits until it moves by more than
50%; an ISVC the optimizer cannot place keeps what it has; requests queued beyond the running
batches count as load to be worked off within a minute.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ...policy.calibration import SloCalibration
from ...policy.estimation import LoadCounters, estimate_load
from ...policy.guards import GuardSettings, planned_rate, wants_new_revision
from ...optimizer.domain import CurrentAllocation, Load
from ...optimizer.solver import solve
from ..engine import Decision, IsvcView
from ..planning import optimizer_system
from ..world import World


@dataclass(frozen=True)
class ModelBasedSettings:
    period_s: float = 30.0
    scale_down_window_s: float = 300.0  # as the HPA's default stabilisation
    attainment_goal: float = 0.95
    guards: GuardSettings = GuardSettings()


class ModelBasedPolicy:
    name = "ours"

    def __init__(self, world: World, nominal: dict[int, Load], settings: ModelBasedSettings = ModelBasedSettings()):
        self.world = world
        self.settings = settings
        self.period_s = settings.period_s
        self._counters: dict[int, LoadCounters] = {}
        self._slo: dict[int, tuple[int, int, int]] = {}  # completed, ttft met, itl met
        self._rate: dict[int, float] = {}
        self._tokens = {i: (load.avg_in_tokens, load.avg_out_tokens) for i, load in nominal.items()}
        self._history: dict[int, deque] = {}
        self._calibration = {i: SloCalibration(goal=settings.attainment_goal) for i in nominal}

    def _observe(self, now: float, index: int, view: IsvcView) -> Load:
        reading = LoadCounters(now, view.completions, view.drops, view.in_flight, view.in_tokens_sum, view.out_tokens_sum)
        earlier = self._counters.get(index)
        self._counters[index] = reading
        if earlier is None:
            rate = view.arrivals / max(now, 1e-9)
        else:
            estimate = estimate_load(earlier, reading)
            rate = estimate.arrival_rate
            if estimate.avg_in_tokens is not None:
                self._tokens[index] = (round(estimate.avg_in_tokens), max(round(estimate.avg_out_tokens), 1))
        previous = self._rate.get(index, rate)
        self._rate[index] = rate
        backlog = view.in_flight - view.ready * view.max_batch  # waiting beyond the running batches
        rate = planned_rate(rate, previous, self.period_s, self.world.cold_start_s, backlog, self.settings.guards)
        avg_in, avg_out = self._tokens[index]
        return Load(rate * 60.0, avg_in, avg_out)

    def _calibrate(self, index: int, view: IsvcView) -> tuple[float, float]:
        done, ttft_met, itl_met = self._slo.get(index, (0, 0, 0))
        self._slo[index] = (view.completions, view.ttft_met, view.itl_met)
        return self._calibration[index].update(view.completions - done, view.ttft_met - ttft_met, view.itl_met - itl_met)

    def decide(self, now: float, views: list[IsvcView]) -> dict[int, Decision]:
        loads = {i: self._observe(now, i, view) for i, view in enumerate(views)}
        scales = {i: self._calibrate(i, view) for i, view in enumerate(views)}
        current = {
            i: CurrentAllocation(
                view.accelerator, view.replicas, view.max_batch, view.replicas * self.world.gpus[view.accelerator].cost_per_hour
            )
            for i, view in enumerate(views)
        }
        solution = solve(optimizer_system(self.world, loads, current, slo_scale=scales))
        decisions = {}
        for index, view in enumerate(views):
            alloc = solution.allocations.get(self.world.isvcs[index].name)
            if alloc is None:
                continue
            replicas = self._stabilized(now, index, alloc.num_replicas, view.replicas, alloc.accelerator == view.accelerator)
            if wants_new_revision(alloc.accelerator, alloc.max_batch, view.accelerator, view.max_batch, self.settings.guards):
                decisions[index] = Decision(replicas, alloc.accelerator, alloc.max_batch)
            else:
                decisions[index] = Decision(replicas)
        return decisions

    def _stabilized(self, now: float, index: int, wanted: int, current: int, same_gpu: bool) -> int:
        history = self._history.setdefault(index, deque())
        if not same_gpu:
            history.clear()
        history.append((now, wanted))
        while history[0][0] < now - self.settings.scale_down_window_s:
            history.popleft()
        return wanted if wanted >= current else max(r for _, r in history)


def initial_decisions(world: World, loads: dict[int, Load]) -> dict[int, Decision]:
    """What our policy deploys at time zero for the opening load."""
    solution = solve(optimizer_system(world, loads))
    result = {}
    for index, spec in enumerate(world.isvcs):
        alloc = solution.allocations.get(spec.name)
        if alloc is None:
            option = spec.options[spec.default_accelerator]
            result[index] = Decision(spec.min_replicas, spec.default_accelerator, option.max_num_seqs)
        else:
            result[index] = Decision(max(alloc.num_replicas, 1), alloc.accelerator, alloc.max_batch)
    return result
