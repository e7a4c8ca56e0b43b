"""Typed domain of the optimizer: what the cluster offers, what each service needs, what we decide.

Units follow Inferno's data files: costs in cents/hour per accelerator, arrival rates in
requests/minute, latencies in milliseconds, throughput targets in tokens/second.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

DEFAULT_CLASS_NAME = "Free"
LOWEST_PRIORITY = 100


class SaturationPolicy(str, enum.Enum):
    """How capacity left after SLO-meeting allocations is shared among servers that got none."""

    NONE = "None"
    PRIORITY_EXHAUSTIVE = "PriorityExhaustive"
    PRIORITY_ROUND_ROBIN = "PriorityRoundRobin"
    ROUND_ROBIN = "RoundRobin"


@dataclass(frozen=True, slots=True)
class Accelerator:
    name: str
    type: str
    multiplicity: int
    cost: float


@dataclass(frozen=True, slots=True)
class DecodePrefillParams:
    """2025 profile: decode step = alpha + beta*n; prefill = gamma + delta*inTokens*n (ms)."""

    alpha: float
    beta: float
    gamma: float
    delta: float


@dataclass(frozen=True, slots=True)
class IterationParams:
    """2026 profile: iteration time = alpha + n*(beta*compute tokens + gamma*memory tokens) (ms)."""

    alpha: float
    beta: float
    gamma: float


PerfParams = Union[DecodePrefillParams, IterationParams]


@dataclass(frozen=True, slots=True)
class PrefillLine:
    """A measured prefill of t tokens takes gamma + delta*t ms (2025 prefillParms): beside 2026
    perfParms, the compute-bound steps that the perfParms line, fitted mostly to memory-bound
    decode steps, underrates. Only the vLLM latency model reads it (policy/latency.py)."""

    gamma: float
    delta: float


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """Performance of one model on one accelerator (possibly several cards per replica)."""

    model: str
    accelerator: str
    acc_count: int
    max_batch_size: int
    at_tokens: int
    params: PerfParams
    # KV-cache size in tokens where known (measured profiles): then the batch is bounded by
    # memory, min(maxBatchSize, kvCacheTokens // (in + out)), instead of Inferno's scaling rule
    kv_cache_tokens: int = 0
    # a profile's prefillParms beside its perfParms (None: none given); the optimizer sizes
    # with params alone, as Inferno does
    prefill: PrefillLine | None = None

    def batch_limit(self, in_tokens: int, out_tokens: int) -> int:
        """Largest batch the server can hold for requests of this shape."""
        if self.kv_cache_tokens > 0:
            return max(min(self.max_batch_size, self.kv_cache_tokens // max(in_tokens + out_tokens, 1)), 1)
        # Inferno: maxBatchSize holds at atTokens output tokens; longer outputs hold the cache longer
        return max(self.max_batch_size * self.at_tokens // out_tokens, 1)


@dataclass(frozen=True, slots=True)
class ServiceTarget:
    """SLOs of a class for one model; a value of 0 means 'no target'."""

    itl_ms: float = 0.0
    ttft_ms: float = 0.0
    tps: float = 0.0


@dataclass(frozen=True, slots=True)
class ServiceClass:
    name: str
    priority: int
    targets: Mapping[str, ServiceTarget]


@dataclass(frozen=True, slots=True)
class Load:
    arrival_rate_rpm: float
    avg_in_tokens: int
    avg_out_tokens: int

    @property
    def is_zero(self) -> bool:
        return self.arrival_rate_rpm == 0 or self.avg_out_tokens == 0


@dataclass(frozen=True, slots=True)
class CurrentAllocation:
    accelerator: str
    num_replicas: int
    max_batch: int = 0
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class Server:
    """One inference service (an ISVC) of a model in a service class."""

    name: str
    class_name: str
    model: str
    load: Load
    min_replicas: int = 0
    max_batch_size: int = 0
    keep_accelerator: bool = False
    current: CurrentAllocation | None = None  # None: as one with no accelerator, replicas or cost
    accelerators: frozenset[str] = frozenset()  # the types it may run on; empty: any


@dataclass(frozen=True, slots=True)
class OptimizerSpec:
    unlimited: bool = False
    delayed_best_effort: bool = False
    saturation_policy: SaturationPolicy = SaturationPolicy.NONE


@dataclass(frozen=True)
class Catalog:
    """The static part of a problem: what GPUs exist, how models perform on them, the classes."""

    accelerators: Mapping[str, Accelerator]
    profiles: Mapping[tuple[str, str], ModelProfile]
    classes: Mapping[str, ServiceClass]
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)


@dataclass(frozen=True)
class System:
    accelerators: Mapping[str, Accelerator]
    capacity: Mapping[str, int]
    profiles: Mapping[tuple[str, str], ModelProfile]
    classes: Mapping[str, ServiceClass]
    servers: tuple[Server, ...]
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)


@dataclass(slots=True)
class Allocation:
    """A candidate (or chosen) placement of one server on one accelerator type."""

    server: str
    accelerator: str
    num_replicas: int
    max_batch: int
    cost: float
    value: float
    itl_ms: float
    ttft_ms: float
    max_rate_per_replica: float  # requests/second one replica sustains within the SLOs
    best_effort: bool = False


@dataclass(frozen=True)
class Solution:
    allocations: Mapping[str, Allocation]
    unallocated: tuple[str, ...]  # had load (or a minimum) but no candidate fit
    idle: tuple[str, ...] = ()  # no load and no minimum: scaled to zero on purpose

    @property
    def total_cost(self) -> float:
        return sum(a.cost for a in self.allocations.values())
