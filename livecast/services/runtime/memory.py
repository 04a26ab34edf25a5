"""The CPU memory plan: one budget for both engines; the KV cache gets what is left, capped."""
from __future__ import annotations

import dataclasses
import glob
import logging
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("livecast.runtime")


@dataclass(slots=True)
class MemoryConfig:
    memory_budget: int | None = field(default=None, metadata={  # bytes
        "flag": "--memory-budget-gb", "unit": "GiB",
        "help": "CPU hosts: memory for both engines; the KV cache gets what diffusion and LLM weights leave"})
    diffusion_memory: int | None = field(default=None, metadata={  # bytes
        "flag": "--diffusion-memory-gb", "unit": "GiB",
        "help": "with --memory-budget-gb: what diffusion needs (default: its weights x 1.5)"})

    def __post_init__(self) -> None:
        for name in ("memory_budget", "diffusion_memory"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 bytes, got {getattr(self, name)}")


def plan_memory(engine, memory: MemoryConfig, diffusion):
    """The EngineConfig to build: on a CPU host with `memory_budget` and no explicit KV size, its
    KV cache sized from what the diffusion models and LLM weights leave. (On CUDA the engine reads
    free device memory after the diffusion side is built, which accounts for it already.)"""
    if memory.memory_budget is None or engine.kv_cache_memory is not None:
        return engine
    if engine.torch_device().type != "cpu":
        return engine
    diffusion_bytes = 0
    if diffusion is not None and memory.diffusion_memory is not None:
        diffusion_bytes = memory.diffusion_memory
    elif diffusion is not None:
        pipe = diffusion.pipe
        weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder)
                      for p in m.parameters())
        diffusion_bytes = int(weights * 1.5)  # activations of a max-size batch: about half the weights again
    kv = plan_kv_cache_bytes("cpu", memory.memory_budget, diffusion_bytes, _llm_weight_bytes(engine))
    return dataclasses.replace(engine, kv_cache_memory=kv)


def plan_kv_cache_bytes(device: str, memory_budget: int, diffusion_bytes: int, llm_weight_bytes: int,
                        default_cap: int = 2 << 30) -> int:
    """KV cache size on a CPU host from one memory budget shared by both engines: what is left
    after the diffusion models (weights and activations) and the LLM weights, capped at
    `default_cap`. On CUDA the engine measures free device memory after the diffusion side is
    built and warmed up, so only CPU hosts need this plan."""
    left = memory_budget - diffusion_bytes - llm_weight_bytes
    if left <= 0:
        raise ValueError(f"memory budget {memory_budget / 2**30:.2f} GiB leaves nothing for the KV cache after "
                         f"diffusion ({diffusion_bytes / 2**30:.2f} GiB) and LLM weights "
                         f"({llm_weight_bytes / 2**30:.2f} GiB); raise --memory-budget or set --kv-cache-memory")
    kv = min(left, default_cap)
    logger.info("memory plan (%s): budget %.2f GiB = diffusion %.2f + LLM weights %.2f + KV cache %.2f GiB "
                "(%.2f GiB unassigned)", device, memory_budget / 2**30, diffusion_bytes / 2**30,
                llm_weight_bytes / 2**30, kv / 2**30, (left - kv) / 2**30)
    return kv


def _llm_weight_bytes(config) -> int:
    from safetensors import safe_open

    from livecast.engine.model_loader import resolve_model

    element = torch.tensor([], dtype=config.torch_dtype()).element_size()
    total = 0
    for file in glob.glob(str(resolve_model(config.model) / "*.safetensors")):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                total += _numel(f.get_slice(name).get_shape())
    return total * element


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
