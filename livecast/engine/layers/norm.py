"""RMSNorm, computed in fp32 and stored in the input dtype (as HF Llama does)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from livecast.engine.backend import Backend, default_backend


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float, backend: Backend | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.backend = backend or default_backend()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """With `residual`: returns (norm(x + residual), x + residual), the pre-norm layer pattern."""
        if self.backend.triton:
            from livecast.kernels.rmsnorm import fused_add_rms_norm, rms_norm

            if residual is None:
                return rms_norm(x, self.weight, self.eps)
            fused_add_rms_norm(x, residual, self.weight, self.eps)  # in place: x <- norm, residual <- sum
            return x, residual
        if residual is not None:
            x = x + residual
            residual = x
        if x.dtype == torch.float32:
            # one fused kernel, bit-identical to the steps below in float32 (checked in tests)
            out = F.rms_norm(x, self.weight.shape, self.weight, self.eps)
            return out if residual is None else (out, residual)
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * h.to(dtype)
        return out if residual is None else (out, residual)
