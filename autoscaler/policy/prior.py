"""A conservative profile for a (model, GPU) that has none: a roofline bound. Pure.

An ISVC may be deployed with a model nobody profiled. Its replicas must still be placed and
sized, and the first decisions must over-provision rather than under-provision, until the
online identification (sizing.py) has measured the real step. This module bounds a vLLM step
from above with the two figures that are known without a measurement: the model's parameter
count (read off its name, as nearly every checkpoint carries it: "Llama-3.1-8B-Instruct",
"granite_13b", "Mixtral-8x7B") and the GPU's datasheet memory bandwidth and dense bf16 compute.

A step of `alpha + beta * tokens + gamma * KV read` (the profiles' perfParms):
- alpha: every weight (bf16, 2 bytes a parameter) read once per step, at WEIGHT_EFFICIENCY of
  the peak bandwidth (decode kernels reach 60-85% of it: half is slower than any of them);
- beta: 2 FLOPs per parameter per token, at COMPUTE_EFFICIENCY of the dense peak (prefill
  matmuls reach 50-70%);
- gamma: the KV cache a token of context holds, read at KV_EFFICIENCY of the bandwidth. The
  architecture is unknown, so the cache is sized as full multi-head attention (no grouped
  queries: the largest a model of this size holds) of a model whose width is 128 times its
  depth (Llama-2/3 7-13B, Llama-3.2-1B), and attention kernels are taken at a quarter of the
  bandwidth (paged reads of short blocks: again slower than any measured);
- the KV cache: the GPU's memory at vLLM's 0.9 utilisation less the weights and 2 GB of
  activations, in tokens of that multi-head cache (the fewest seats such a model can have);
- once vLLM reports a replica's KV cache (vllm:cache_config_info: its blocks x block size),
  that replaces the bound, and it also bounds the bytes a token of it holds: no more than all
  the card's memory less the weights, over those tokens (the largest variant the GPU's name
  covers, all of it for the cache: an upper bound on the bytes). Where that is below the
  multi-head bound (grouped or multi-query attention: Llama-3 8B holds 128 KB a token, the
  multi-head bound 605 KB), gamma is that many bytes read at KV_EFFICIENCY: the architecture
  is no longer unknown, only the kernels' speed;
- seats: vLLM's V0/V1 default of 256 running requests (1,024 on 70-160 GiB parts in V1: the
  fewer is the bound), fewer where the cache holds fewer requests of 1,024 tokens.
Each term is an upper bound on its cost, so the prior's capacity is below the real one: the
first decisions over-provision. The identification then replaces alpha and the per-token costs
with measured ones (sizing.Identification).

A model whose name carries no size, or a GPU not in GPU_SPECS, gets no prior: the ISVC is left
undecided, as before, with the reason in its condition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..optimizer.domain import IterationParams, ModelProfile

WEIGHT_EFFICIENCY = 0.5
COMPUTE_EFFICIENCY = 0.3
KV_EFFICIENCY = 0.25
WIDTH_PER_LAYER = 128.0  # d_model / layers of dense decoder-only models of 1-13B parameters
MEMORY_UTILIZATION = 0.9  # vLLM's --gpu-memory-utilization default
ACTIVATION_BYTES = 2e9
DEFAULT_SEATS = 256  # vLLM's --max-num-seqs default
# query heads per K/V head at most (multi-query attention: Falcon-7B shares one among 71): a
# token's KV bytes are at least the multi-head bound's over this
MAX_KV_SHARING = 128


@dataclass(frozen=True)
class GpuSpec:
    bandwidth: float  # bytes/s, peak HBM/GDDR
    flops: float  # dense bf16 FLOP/s, peak
    memory: float  # bytes
    largest_memory: float  # bytes of the largest variant the name covers (H100 NVL, A100 80 GB)


# datasheet figures; where a name covers variants, the slowest and smallest one (H100 PCIe,
# A100 40 GB): a conservative prior may not assume the better part; and the largest memory
# of any variant, for the upper bound on a KV token's bytes (prior_profile). Matched by substring of
# the accelerator's type, the longest name first (H100 before H10, L40S before L40).
GPU_SPECS = {
    "B200": GpuSpec(8.0e12, 2.25e15, 180e9, 192e9),
    "H200": GpuSpec(4.8e12, 9.89e14, 141e9, 141e9),
    "H100": GpuSpec(2.0e12, 7.56e14, 80e9, 94e9),
    "A100": GpuSpec(1.555e12, 3.12e14, 40e9, 80e9),
    "L40S": GpuSpec(0.864e12, 3.62e14, 48e9, 48e9),
    "L40": GpuSpec(0.864e12, 1.81e14, 48e9, 48e9),
    "A10G": GpuSpec(0.6e12, 7.0e13, 24e9, 24e9),
    "L4": GpuSpec(0.3e12, 1.21e14, 24e9, 24e9),
}

_SIZE = re.compile(r"^(?:(\d+)x)?(\d+(?:\.\d+)?)([bm])$")


def parameter_count(model: str) -> float | None:
    """Parameters a model's name states: a part of it (split on - _ / : and spaces) such as
    "8b", "1.5B", "350m" or "8x7b" (a mixture of experts: every expert's weights, the most a
    step may read). None where no part states one of at least a million."""
    for part in re.split(r"[-_/:\s]+", model.lower()):
        if found := _SIZE.match(part):
            experts, size, unit = found.groups()
            count = float(experts or 1) * float(size) * (1e9 if unit == "b" else 1e6)
            return count if count >= 1e6 else None
    return None


def gpu_spec(accelerator_type: str) -> GpuSpec | None:
    name = accelerator_type.upper()
    return next((GPU_SPECS[k] for k in sorted(GPU_SPECS, key=len, reverse=True) if k in name), None)


def prior_profile(model: str, accelerator: str, accelerator_type: str, kv_cache_tokens: int | None = None) -> ModelProfile | None:
    """The roofline-bound profile of `model` on one card of `accelerator_type` (module doc), or
    None where the model's size or the GPU is unknown or the weights do not fit on the card.
    `kv_cache_tokens`: a replica's KV cache as vLLM reports it, where known (module doc)."""
    parameters, gpu = parameter_count(model), gpu_spec(accelerator_type)
    if parameters is None or gpu is None:
        return None
    weight_bytes = 2.0 * parameters
    width = (WIDTH_PER_LAYER * parameters / 12.0) ** (1.0 / 3.0)  # parameters ~ 12 layers width^2
    kv_bytes = 2 * 2 * (width / WIDTH_PER_LAYER) * width  # K and V, bf16, every layer
    free = gpu.memory * MEMORY_UTILIZATION - weight_bytes - ACTIVATION_BYTES
    if free <= 0.0:
        return None
    kv_tokens = int(free // kv_bytes)
    if kv_cache_tokens is not None and kv_cache_tokens >= 1:
        kv_tokens = kv_cache_tokens
        # what a token of the reported cache can hold at most: the largest card, all of it; and
        # no less than any attention shares its K/V heads by (a cache reported absurdly large
        # must not price the KV read at nothing)
        held = max(gpu.largest_memory - weight_bytes, 0.0) / kv_cache_tokens
        kv_bytes = min(kv_bytes, max(held, kv_bytes / MAX_KV_SHARING))
    params = IterationParams(
        alpha=1000.0 * weight_bytes / (gpu.bandwidth * WEIGHT_EFFICIENCY),
        beta=1000.0 * 2.0 * parameters / (gpu.flops * COMPUTE_EFFICIENCY),
        gamma=1000.0 * kv_bytes / (gpu.bandwidth * KV_EFFICIENCY),
    )
    return ModelProfile(model, accelerator, 1, seats(kv_tokens), 1024, params, kv_cache_tokens=kv_tokens)


def seats(kv_cache_tokens: int) -> int:
    """vLLM's default seats, fewer where the KV cache holds fewer requests of 1,024 tokens."""
    return max(min(DEFAULT_SEATS, kv_cache_tokens // 1024), 1)
