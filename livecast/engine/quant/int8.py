"""Symmetric int8 weights (`w = code * scale`) for GGUF Q8_0 tensors (the tied SmolLM2 embedding /
lm_head) and the `int8` weight kernel.

With the native AVX2 kernels (`kernels.native.quant_gemm`), scales are per block of 32 inputs as
in Q8_0, so a Q8_0 tensor keeps its own codes and scales exactly. Otherwise PyTorch's
`_weight_int8pack_mm` takes one scale per output row, so the values are re-quantized per row:
at most half a step of the row's largest block more rounding (measured in `bench quant`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from livecast.engine.quant.linear import QuantizedLinear
from livecast.kernels import native
from livecast.kernels.native import quant_gemm

OP_DTYPE = torch.bfloat16


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (N, K), scales float32 (N,)) with `weight ≈ codes * scales[:, None]`."""
    w = weight.detach().float()
    scales = w.abs().amax(1).clamp(min=1e-8) / 127
    codes = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return codes, scales


class Int8Linear(QuantizedLinear):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.kernel = "native" if torch.device(device).type == "cpu" and native.available() else "aten"
        codes, scales = quant_gemm.quantize_q8(weight) if self.kernel == "native" else quantize_int8(weight)
        self.register_buffer("codes", codes.to(device))
        self.register_buffer("scales", scales.to(device, torch.float16 if self.kernel == "native" else OP_DTYPE))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(device), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        if self.kernel == "native":
            return quant_gemm.dequantize_q8(self.codes, self.scales)
        return self.codes.float() * self.scales.float()[:, None]

    def weight_mm(self, x2: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native":
            return quant_gemm.q8_gemm(x2, self.codes, self.scales)
        x2 = x2.to(self.scales.dtype)
        if self.codes.device.type == "cpu":
            return torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scales)
        return F.linear(x2, self.codes.to(x2.dtype)) * self.scales
