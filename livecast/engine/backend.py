"""Which kernels run the model, decided once per engine from the config, the device and the CPU.

- triton: CUDA (or forced with `attention_backend="triton"`): Triton attention, RMSNorm, rotary.
- native: a CPU where the x86 C kernels build (kernels.native): the torch layers with the native
  paged decode attention on float32 caches, and the fused native decode step where every linear
  is a native quantized kernel (the model builds it, models/llama_native.py).
- torch: everything else, plain PyTorch.

`deterministic` (native only) makes the numerics batch-invariant: every token, prefill or
decode, alone or among many, runs the same per-row kernels with one reduction order each (the
native quantized GEMMs, the native dense GEMM for dense linears, the single-query paged attention
over a float32 cache), so its logits do not depend on the batch, the chunking or a prefix-cache hit.

Layers and the step's metadata receive this one value; nothing else picks a path.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from livecast.kernels import native

KINDS = ("torch", "triton", "native")


@dataclass(frozen=True, slots=True)
class Backend:
    kind: str  # one of KINDS
    reason: str  # what the engine logs
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"backend must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.deterministic and self.kind != "native":
            raise ValueError(f"deterministic (batch-invariant) numerics need the native CPU kernels; "
                             f"this engine runs {self.reason}")

    @property
    def triton(self) -> bool:
        return self.kind == "triton"

    @property
    def native(self) -> bool:
        return self.kind == "native"


def choose_backend(attention_backend: str, device: torch.device, deterministic: bool = False) -> Backend:
    """`attention_backend`: EngineConfig's auto | torch | triton. Raises ValueError when
    `deterministic` is asked of a backend that cannot give it."""
    if attention_backend == "triton" or (attention_backend == "auto" and device.type == "cuda"):
        backend = Backend("triton", "triton" if attention_backend == "triton" else "triton (CUDA)")
    elif device.type != "cpu":
        backend = Backend("torch", f"torch ({device.type})")
    elif not native.available():
        backend = Backend("torch", f"torch (native kernels unavailable: {native.unavailable()})")
    elif deterministic:
        return Backend("native", "native (x86 CPU kernels), deterministic (batch-invariant)", True)
    else:
        return Backend("native", "native (x86 CPU kernels)")
    return Backend(backend.kind, backend.reason, deterministic)  # deterministic here raises


@functools.cache
def default_backend() -> Backend:
    """What a model or step built without an engine (tests, tools) runs: the CPU's choice."""
    return choose_backend("auto", torch.device("cpu"))
