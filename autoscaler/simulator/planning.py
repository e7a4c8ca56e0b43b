"""The bridge from a simulated world to the optimizer: the world as an optimizer problem."""

from __future__ import annotations

from collections.abc import Mapping

from ..optimizer.domain import (
    Accelerator,
    CurrentAllocation,
    Load,
    ModelProfile,
    OptimizerSpec,
    SaturationPolicy,
    Server,
    ServiceClass,
    ServiceTarget,
    System,
)
from .world import World


def optimizer_system(
    world: World,
    loads: Mapping[int, Load],
    current: Mapping[int, CurrentAllocation] | None = None,
    slo_scale: Mapping[int, tuple[float, float]] | None = None,
) -> System:
    """The world as an optimizer problem.

    `slo_scale` sizes an ISVC for (TTFT, ITL) targets tighter than its class's SLOs. Each ISVC
    gets a class of its own (same priority) so that its targets can differ from another ISVC's
    of the same class and model.
    """
    current = current or {}
    slo_scale = slo_scale or {}
    accelerators = {name: Accelerator(name, name, 1, gpu.cost_per_hour) for name, gpu in world.gpus.items()}
    profiles = {}
    classes = {}
    servers = []
    for index, spec in enumerate(world.isvcs):
        cls = world.classes[spec.service_class]
        ttft_scale, itl_scale = slo_scale.get(index, (1.0, 1.0))
        target = ServiceTarget(itl_ms=cls.itl_ms * itl_scale, ttft_ms=cls.ttft_ms * ttft_scale)
        classes[spec.name] = ServiceClass(spec.name, cls.priority, {spec.model: target})
        for acc, option in spec.options.items():
            profiles[(spec.model, acc)] = ModelProfile(
                spec.model, acc, 1, option.max_num_seqs, 0, option.params, kv_cache_tokens=option.kv_cache_tokens
            )
        servers.append(
            Server(
                name=spec.name,
                class_name=spec.name,
                model=spec.model,
                load=loads[index],
                min_replicas=spec.min_replicas,
                current=current.get(index),
            )
        )
    return System(
        accelerators=accelerators,
        capacity={name: gpu.capacity for name, gpu in world.gpus.items()},
        profiles=profiles,
        classes=classes,
        servers=tuple(servers),
        optimizer=OptimizerSpec(saturation_policy=SaturationPolicy.PRIORITY_ROUND_ROBIN),
    )
