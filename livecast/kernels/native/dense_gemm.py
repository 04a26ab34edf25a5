"""A batch-invariant dense GEMM for x86 CPUs (dense_gemm.c), beside its plain-torch reference.

`dense_gemm(x, weight)` computes `x @ weight.T` with one fixed reduction order per output, so
a row's result is the same bits whatever other rows share the call; torch's CPU matmul (MKL)
chooses kernels by shape and gives other bits for some row counts. The engine's deterministic
mode runs every dense linear through it (engine/layers/linear.py).
"""
from __future__ import annotations

import torch

from livecast.kernels.native.build import library

K_MULTIPLE = 8


def supports(weight: torch.Tensor) -> bool:
    return (weight.dim() == 2 and weight.dtype in (torch.float32, torch.bfloat16) and weight.is_contiguous()
            and weight.device.type == "cpu" and weight.shape[1] % K_MULTIPLE == 0 and library() is not None)


def dense_gemm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (M, K) -> (M, N) float32, for `weight` (N, K) float32 or bfloat16, contiguous, K % 8 == 0."""
    n, k = weight.shape
    if weight.dtype not in (torch.float32, torch.bfloat16) or not weight.is_contiguous() or k % K_MULTIPLE:
        raise ValueError(f"weight must be contiguous float32 or bfloat16 (N, K) with K % {K_MULTIPLE} == 0, "
                         f"got {weight.dtype} {tuple(weight.shape)}")
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be (rows, {k}), got {tuple(x.shape)}")
    if x.dtype != torch.float32 or x.stride(1) != 1:
        x = x.float().contiguous()
    out = torch.empty(x.shape[0], n)
    status = library().lc_dense_gemm(x.data_ptr(), x.stride(0), x.shape[0], k, weight.data_ptr(),
                                     int(weight.dtype == torch.bfloat16), n, out.data_ptr(), n,
                                     torch.get_num_threads())
    if status:
        raise ValueError(f"shape not supported by the native dense GEMM: x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    return out


def dense_gemm_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x.double() @ weight.double().T).float()
