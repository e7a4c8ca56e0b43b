"""Small hand-made optimizer problems for unit and property tests."""

from __future__ import annotations

from autoscaler.optimizer.domain import (
    Accelerator,
    CurrentAllocation,
    IterationParams,
    Load,
    ModelProfile,
    OptimizerSpec,
    SaturationPolicy,
    Server,
    ServiceClass,
    ServiceTarget,
    System,
)

# "A" is slow and cheap, "B" fast and dearer per replica; both sold singly and in pairs
ACCELERATORS = {
    "A": Accelerator("A", "A", 1, 10.0),
    "B": Accelerator("B", "B", 1, 40.0),
    "2xB": Accelerator("2xB", "B", 2, 80.0),
}
PARAMS = {
    "A": IterationParams(12.0, 0.03, 0.002),
    "B": IterationParams(4.0, 0.01, 0.0006),
    "2xB": IterationParams(2.5, 0.006, 0.0004),
}


def profiles(model: str = "m", max_batch: int = 64) -> dict:
    return {(model, acc): ModelProfile(model, acc, 1, max_batch, 512, PARAMS[acc]) for acc in ACCELERATORS}


def service_classes(itl: float = 60.0, ttft: float = 2000.0, tps: float = 0.0) -> dict:
    return {
        "gold": ServiceClass("gold", 1, {"m": ServiceTarget(itl_ms=itl, ttft_ms=ttft, tps=tps)}),
        "free": ServiceClass("free", 2, {"m": ServiceTarget(itl_ms=itl * 2, ttft_ms=ttft * 2, tps=tps)}),
    }


def server(name: str, rpm: float, cls: str = "gold", **kwargs) -> Server:
    return Server(name=name, class_name=cls, model="m", load=Load(rpm, kwargs.pop("inp", 256), kwargs.pop("out", 256)), **kwargs)


def system(
    servers,
    capacity=None,
    policy: SaturationPolicy = SaturationPolicy.NONE,
    unlimited: bool = False,
    delayed: bool = False,
    classes=None,
) -> System:
    return System(
        accelerators=ACCELERATORS,
        capacity=capacity if capacity is not None else {"A": 10_000, "B": 10_000},
        profiles=profiles(),
        classes=classes or service_classes(),
        servers=tuple(servers),
        optimizer=OptimizerSpec(unlimited=unlimited, delayed_best_effort=delayed, saturation_policy=policy),
    )


__all__ = ["CurrentAllocation", "SaturationPolicy", "server", "service_classes", "system"]
