"""Pure: the simulated world as the controller's data, the Catalog its ConfigMap would hold.

Each GPU type is an accelerator of one card; each ISVC's serving options are profiles with the
perfParms the optimizer is given (fitted, not the simulator's ground truth), none for an ISVC
deployed with no profile; each class holds
the SLOs of the models its ISVCs serve. The saturation policy is this cluster's configuration
(Inferno's optimizer-data.json): capacity left after the SLO-meeting allocations goes round robin
by priority, so an overloaded cluster still gives every ISVC some replicas.
"""

from __future__ import annotations

from ..optimizer.domain import (
    Accelerator,
    Catalog,
    ModelProfile,
    OptimizerSpec,
    SaturationPolicy,
    ServiceClass,
    ServiceTarget,
)
from .world import World


def world_catalog(world: World) -> Catalog:
    accelerators = {name: Accelerator(name, name, 1, gpu.cost_per_hour) for name, gpu in world.gpus.items()}
    profiles = {}
    targets: dict[str, dict[str, ServiceTarget]] = {name: {} for name in world.classes}
    for spec in world.isvcs:
        cls = world.classes[spec.service_class]
        targets[cls.name][spec.model] = ServiceTarget(itl_ms=cls.itl_ms, ttft_ms=cls.ttft_ms)
        for acc, option in spec.options.items() if spec.profiled else ():
            profiles[(spec.model, acc)] = ModelProfile(
                spec.model,
                acc,
                1,
                option.max_num_seqs,
                0,
                option.params,
                kv_cache_tokens=option.kv_cache_tokens,
                prefill=option.prefill,
            )
    classes = {name: ServiceClass(name, cls.priority, targets[name]) for name, cls in world.classes.items()}
    return Catalog(accelerators, profiles, classes, OptimizerSpec(saturation_policy=SaturationPolicy.PRIORITY_ROUND_ROBIN))


def capacity(world: World) -> dict[str, int]:
    """Every card of the cluster: all its workloads are managed ISVCs, which the planner places anew."""
    return {name: gpu.capacity for name, gpu in world.gpus.items()}
