"""What every quantized linear shares: the weight kernel for small steps, and an optional dense
copy of the same (dequantized) weights for steps of many rows, where a dense GEMM is
compute-bound and wins. Both paths compute the same model, so outputs do not depend on batch
size beyond float rounding."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuantizedLinear(nn.Module):
    """Subclasses set `in_features`, `out_features`, `bias` and implement `weight_mm` (x2 (rows,
    in_features) -> (rows, out_features)) and `dequantize` (the float32 weight they compute with)."""

    in_features: int
    out_features: int

    def __init__(self) -> None:
        super().__init__()
        self.dense_weight: torch.Tensor | None = None
        self.dense_min_tokens = 1 << 62

    def weight_mm(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def set_dense(self, weight: torch.Tensor, min_tokens: int) -> None:
        """Keep `weight`, the dense dequantized copy, for steps of >= `min_tokens` rows."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(f"dense copy {tuple(weight.shape)} does not match {self.out_features}x{self.in_features}")
        self.dense_weight = weight.to(next(iter(self.buffers())).device)
        self.dense_min_tokens = min_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 2  # the engine's (num_tokens, features): no reshapes to dispatch
        x2 = x if flat else x.reshape(-1, self.in_features)
        if self.dense_weight is not None and x2.shape[0] >= self.dense_min_tokens:
            out = F.linear(x2.to(self.dense_weight.dtype), self.dense_weight)
        else:
            out = self.weight_mm(x2)
        if self.bias is not None:
            out = out + self.bias
        out = out.to(x.dtype)
        return out if flat else out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"dense_min_tokens={self.dense_min_tokens if self.dense_weight is not None else None}")
