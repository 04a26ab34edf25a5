"""Per-output-channel symmetric int8 weights (`w = code * scale`) through `_weight_int8pack_mm`.

Used for GGUF Q8_0 tensors (the tied SmolLM2 embedding / lm_head): Q8_0 scales blocks of 32
inputs, the int8 op one scale per output row, so the block values are re-quantized per row. The
extra rounding is at most half a step of the row's largest block (measured in `bench quant`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.quant.linear import QuantizedLinear

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
        codes, scales = quantize_int8(weight)
        self.register_buffer("codes", codes.to(device))
        self.register_buffer("scales", scales.to(device, OP_DTYPE))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(device), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        return self.codes.float() * self.scales.float()[:, None]

    def weight_mm(self, x2: torch.Tensor) -> torch.Tensor:
        x2 = x2.to(self.scales.dtype)
        if self.codes.device.type == "cpu":
            return torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scales)
        return F.linear(x2, self.codes.to(x2.dtype)) * self.scales
