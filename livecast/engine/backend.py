"""Which kernels run the model, decided once per engine from the config, the device and the CPU.

- triton: CUDA (or forced with `attention_backend="triton"`): Triton attention, RMSNorm, rotary.
- native: a CPU where the x86 C kernels build (kernels.native): the torch layers with the native
  paged decode attention on float32 caches, and the fused native decode step where every linear
  is a native quantized kernel (the model builds it, models/llama_native.py).
- torch: everything else, plain PyTorch.

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

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"backend must be one of {', '.join(KINDS)}; got {self.kind!r}")

    @property
    def triton(self) -> bool:
        return self.kind == "triton"

    @property
    def native(self) -> bool:
        return self.kind == "native"


def choose_backend(attention_backend: str, device: torch.device) -> Backend:
    """`attention_backend`: EngineConfig's auto | torch | triton."""
    if attention_backend == "triton" or (attention_backend == "auto" and device.type == "cuda"):
        return Backend("triton", "triton" if attention_backend == "triton" else "triton (CUDA)")
    if device.type != "cpu":
        return Backend("torch", f"torch ({device.type})")
    if not native.available():
        return Backend("torch", f"torch (native kernels unavailable: {native.unavailable()})")
    return Backend("native", "native (x86 CPU kernels)")


@functools.cache
def default_backend() -> Backend:
    """What a model or step built without an engine (tests, tools) runs: the CPU's choice."""
    return choose_backend("auto", torch.device("cpu"))
