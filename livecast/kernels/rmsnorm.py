"""RMSNorm, plain and fused with the residual add (vLLM semantics): fp32 math, input-dtype storage."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    out_ptr, x_ptr, residual_ptr, weight_ptr, eps, hidden,
    stride_out_token, stride_x_token, stride_residual_token,
    HAS_RESIDUAL: tl.constexpr, BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < hidden
    x = tl.load(x_ptr + token * stride_x_token + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        # The sum is rounded to the storage dtype before the norm, as the unfused model would.
        x = x + tl.load(residual_ptr + token * stride_residual_token + offs, mask=mask, other=0.0).to(tl.float32)
        x = x.to(residual_ptr.dtype.element_ty)
        tl.store(residual_ptr + token * stride_residual_token + offs, x, mask=mask)
        x = x.to(tl.float32)
    variance = tl.sum(x * x, 0) / hidden
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = x * tl.rsqrt(variance + eps) * weight
    tl.store(out_ptr + token * stride_out_token + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    assert x.dim() == 2, f"x must be (num_tokens, hidden), got {tuple(x.shape)}"
    assert x.stride(1) == 1, f"x rows must be contiguous, strides {x.stride()}"
    assert weight.shape == (x.shape[1],) and weight.is_contiguous(), \
        f"weight must be contiguous ({x.shape[1]},), got {tuple(weight.shape)}"
    assert weight.device == x.device, "x and weight on different devices"


def _launch(out: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    num_tokens, hidden = x.shape
    if num_tokens == 0:
        return
    block_h = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(num_tokens,)](
        out, x, x if residual is None else residual, weight, eps, hidden,
        out.stride(0), x.stride(0), x.stride(0) if residual is None else residual.stride(0),
        HAS_RESIDUAL=residual is not None, BLOCK_H=block_h, num_warps=min(max(block_h // 256, 1), 16),
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`x * rsqrt(mean(x²) + eps) * weight` per row of `x` `(num_tokens, hidden)`; returns a new tensor."""
    _check(x, weight)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(out, x, None, weight, eps)
    return out


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """In place: `residual ← x + residual`, then `x ← rms_norm(residual) * weight`."""
    _check(x, weight)
    assert residual.shape == x.shape and residual.dtype == x.dtype, \
        f"residual {residual.dtype} {tuple(residual.shape)} must match x {x.dtype} {tuple(x.shape)}"
    assert residual.stride(1) == 1, f"residual rows must be contiguous, strides {residual.stride()}"
    _launch(x, x, residual, weight, eps)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype)


def fused_add_rms_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    residual.copy_((x.float() + residual.float()).to(residual.dtype))
    x.copy_(rms_norm_ref(residual, weight, eps))
