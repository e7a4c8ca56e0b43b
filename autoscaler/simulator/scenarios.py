"""The embedded simulation world and its traffic scenarios (all seeded, no cluster needed).

Five ISVCs over three GPU types: three Llama shapes whose ground truth is the measured H100
profiles, and two Inferno models (granite_13b, mistral_7b) that may run on L40S, A100 or H100
with Inferno's perfParms as ground truth. Request sizes come from the Azure traces.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..optimizer.domain import IterationParams
from .profiles import FormulaProfile, load_measured
from .traffic import Requests, Trace, builtin_trace, looped, poisson_arrivals, replayed, sized
from .world import ClassSpec, GpuType, IsvcSpec, Scenario, ServingOption, World

SCENARIOS = ("mixed", "steady", "diurnal", "step", "bursty")
DEFAULT_DURATION_S = 3600.0
VLLM_MAX_NUM_SEQS = 256

GPUS = {
    "H100": GpuType("H100", 4.00, 16),
    "A100": GpuType("A100", 2.20, 12),
    "L40S": GpuType("L40S", 1.40, 12),
}
CLASSES = {
    "Premium": ClassSpec("Premium", 1, ttft_ms=1000.0, itl_ms=30.0),
    "Bronze": ClassSpec("Bronze", 2, ttft_ms=2000.0, itl_ms=80.0),
    "Free": ClassSpec("Free", 3, ttft_ms=4000.0, itl_ms=160.0),
}
# (ISVC, model, class, size source, base rate req/s)
ISVCS = (
    ("chat-8b", "llama-3-8b", "Premium", "conv", 40.0),
    ("code-1b", "llama-3.2-1b", "Premium", "code", 20.0),
    ("chat-13b", "llama-2-13b", "Bronze", "conv", 500 / 60.0),
    ("granite-13b", "granite_13b", "Bronze", "conv", 6.0),
    ("mistral-7b", "mistral_7b", "Free", "conv", 8.0),
)
INFERNO_MODELS = ("granite_13b", "mistral_7b")


def _inferno_options(model: str) -> dict[str, ServingOption]:
    path = Path(str(resources.files("autoscaler") / "data" / "inferno-large" / "model-data.json"))
    options = {}
    for entry in json.loads(path.read_text())["models"]:
        if entry["name"] == model and entry["acc"] in GPUS:
            p = entry["perfParms"]
            params = IterationParams(p["alpha"], p["beta"], p["gamma"])
            # Inferno's maxBatchSize holds at atTokens per request: that is its KV budget
            truth = FormulaProfile(params, kv_cache_tokens=entry["maxBatchSize"] * entry["atTokens"])
            options[entry["acc"]] = ServingOption(entry["acc"], truth, params, entry["maxBatchSize"])
    return options


def default_world(cold_start_s: float = 60.0) -> World:
    isvcs = []
    for name, model, cls, _, _ in ISVCS:
        if model in INFERNO_MODELS:
            options, default = _inferno_options(model), "A100"
        else:
            measured = load_measured(model)
            fitted = ServingOption("H100", measured, measured.fitted_params(), VLLM_MAX_NUM_SEQS, measured.fitted_prefill())
            options = {"H100": fitted}
            default = "H100"
        isvcs.append(IsvcSpec(name, model, cls, options, default, min_replicas=1, max_replicas=40))
    return World(GPUS, CLASSES, tuple(isvcs), cold_start_s)


def rate_shape(kind: str, seconds: np.ndarray, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplier of an ISVC's base rate over time; every shape peaks at 1."""
    if kind == "steady":
        return np.ones_like(seconds)
    if kind == "diurnal":  # one day compressed into the run: trough 35% of the peak
        return 0.35 + 0.65 * (1 - np.cos(2 * np.pi * seconds / duration)) / 2
    if kind == "step":  # e.g. 250 -> 500 req/min at half time
        return np.where(seconds < duration / 2, 0.5, 1.0)
    if kind == "bursty":  # a quarter of the peak, with spikes to the peak lasting 1-2 minutes
        shape = np.full_like(seconds, 0.25)
        # a spike may start anywhere that leaves room for its longest length, or at 0 in a short run
        for start in rng.uniform(0, max(duration - 120, 0.0), size=max(int(duration / 900), 1)):
            shape[(seconds >= start) & (seconds < start + rng.uniform(60, 120))] = 1.0
        return shape
    raise ValueError(kind)


def _superposed(trace: Trace, isvc: int, copies: int, duration: float, rng: np.random.Generator) -> Requests:
    """A trace replayed `copies` times at once, each copy rotated by a random offset."""
    span = max(float(trace.time[-1]), duration)
    parts = []
    for _ in range(copies):
        parts.append(replayed(looped(trace, rng.uniform(0, span), span), isvc, duration))
    return Requests.merge(parts)


def build_scenario(
    name: str = "mixed", seed: int = 1, duration_s: float = DEFAULT_DURATION_S, cold_start_s: float = 60.0
) -> Scenario:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r} (one of {', '.join(SCENARIOS)})")
    rng = np.random.default_rng(seed)
    world = default_world(cold_start_s)
    traces = {source: builtin_trace(source) for source in ("code", "conv")}
    mixed_shapes = {"chat-13b": "step", "granite-13b": "diurnal", "mistral-7b": "bursty"}
    seconds = np.arange(int(duration_s), dtype=float)
    parts = []
    for index, (isvc, _, _, source, rate) in enumerate(ISVCS):
        trace = traces[source]
        if name == "mixed" and isvc not in mixed_shapes:
            # real arrival patterns: the trace's own rate is scaled up by superposing copies
            mean_rate = len(trace.time) / float(trace.time[-1])
            parts.append(_superposed(trace, index, max(int(round(rate / mean_rate)), 1), duration_s, rng))
            continue
        shape = mixed_shapes[isvc] if name == "mixed" else name
        times = poisson_arrivals(rate * rate_shape(shape, seconds, duration_s, rng), rng)
        parts.append(sized(times, index, trace, rng))
    return Scenario(name, world, Requests.merge(parts), duration_s)
