"""A dense linear whose rows do not depend on the batch: the deterministic mode's stand-in for
nn.Linear (kernels.native.dense_gemm, one fixed reduction order per output)."""
from __future__ import annotations

import torch
from torch import nn

from livecast.kernels.native.dense_gemm import dense_gemm, supports


class InvariantLinear(nn.Module):
    """`y = x @ W.T + b` like the nn.Linear it replaces, sharing its parameters (tied embeddings
    stay tied); computed in float32 and returned in the input's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not supports(linear.weight.detach()):
            raise ValueError(f"the native dense GEMM does not take {linear.weight.dtype} "
                             f"{tuple(linear.weight.shape)} weights (K % 8, contiguous, CPU)")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = dense_gemm(x.reshape(-1, self.in_features), self.weight.detach())
        if self.bias is not None:
            out = out + self.bias.float()
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
