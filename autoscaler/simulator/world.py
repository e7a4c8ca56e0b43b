"""What a simulation runs on: GPU types, service classes and the ISVCs with their options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..optimizer.domain import PerfParams, PrefillLine
from .profiles import StepTimes
from .server import EngineSettings
from .traffic import Requests


@dataclass(frozen=True)
class GpuType:
    name: str
    cost_per_hour: float  # dollars per card-hour
    capacity: int  # cards in the cluster


@dataclass(frozen=True)
class ServingOption:
    """One GPU type an ISVC may run on: the truth the simulator uses and the model the optimizer gets."""

    accelerator: str
    truth: StepTimes
    params: PerfParams
    max_num_seqs: int
    prefill: PrefillLine | None = None  # the profile's prefill line beside params, where measured

    @property
    def kv_cache_tokens(self) -> int:
        return self.truth.kv_cache_tokens


@dataclass(frozen=True)
class ClassSpec:
    name: str
    priority: int
    ttft_ms: float
    itl_ms: float


@dataclass(frozen=True)
class IsvcSpec:
    name: str
    model: str
    service_class: str
    options: Mapping[str, ServingOption]
    default_accelerator: str  # what the baselines run on
    min_replicas: int = 1
    max_replicas: int = 40
    profiled: bool = True  # False: the catalog holds no profile of its model (the planner starts from a prior)


@dataclass(frozen=True)
class World:
    gpus: Mapping[str, GpuType]
    classes: Mapping[str, ClassSpec]
    isvcs: tuple[IsvcSpec, ...]
    cold_start_s: float = 60.0
    engine: EngineSettings = EngineSettings()  # how every replica runs vLLM (server.py)


@dataclass(frozen=True)
class Scenario:
    name: str
    world: World
    requests: Requests
    duration_s: float
    # the requests before the run (times from -past_s to 0), where its traffic has a past: a
    # window of a trace is one of services that ran before it, and what a controller started at
    # its start reads of that past from Prometheus (planner.recall) the policies' openings read
    # from here. None: the ISVCs open with the run (new deployments)
    past: Requests | None = None
    past_s: float = 0.0

    def arrivals(self, start: float, end: float) -> Requests:
        """The requests that arrive in [start, end), from the past where `start` is below 0."""
        parts = [self.past, self.requests] if self.past is not None and start < 0 else [self.requests]
        return Requests.merge([p.where((p.time >= start) & (p.time < end)) for p in parts])
