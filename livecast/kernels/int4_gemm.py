"""Weight-only int4 GEMM for CUDA: `y = x @ W.T`, W dequantized tile by tile in registers.

Layout (what `engine.quant.Int4Linear` keeps on a GPU): `packed` (N, K/2) uint8, byte j of a row
holding input channel 2j in its low nibble and 2j+1 in its high one; `scales`, `mins` (N, K/g)
with `W[n, k] = code * scales[n, k // g] + mins[n, k // g]`. Accumulates in fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from livecast.kernels.paged_attention import dot, dot_options


@triton.jit
def _int4_gemm_kernel(
    out_ptr, x_ptr, packed_ptr, scales_ptr, mins_ptr, M, N, K,
    stride_out_m, stride_x_m, stride_packed_n, stride_scales_n,
    GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    offs_m = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_x_m + offs_k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        mask_w = mask_k[:, None] & mask_n[None, :]
        byte = tl.load(packed_ptr + offs_n[None, :] * stride_packed_n + (offs_k // 2)[:, None],
                       mask=mask_w, other=0)  # (BLOCK_K, BLOCK_N), each byte read for both nibbles
        code = ((byte.to(tl.int32) >> ((offs_k % 2) * 4)[:, None]) & 0xF).to(tl.float32)
        group_offs = offs_n[None, :] * stride_scales_n + (offs_k // GROUP_SIZE)[:, None]
        scale = tl.load(scales_ptr + group_offs, mask=mask_w, other=0.0).to(tl.float32)
        minimum = tl.load(mins_ptr + group_offs, mask=mask_w, other=0.0).to(tl.float32)
        w = code * scale + minimum  # (BLOCK_K, BLOCK_N) fp32
        if not DOT_UPCAST:  # a GPU MMA takes both operands in the activations' dtype
            w = w.to(x.dtype)
        acc += dot(x, w, DOT_PRECISION, DOT_UPCAST)
    tl.store(out_ptr + offs_m[:, None] * stride_out_m + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def _check(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int) -> None:
    assert x.dim() == 2 and x.stride(1) == 1, f"x must be (M, K) with contiguous rows, got {tuple(x.shape)}"
    n, half_k = packed.shape
    k = x.shape[1]
    assert packed.dtype == torch.uint8 and packed.stride(1) == 1, f"packed must be (N, K/2) uint8, got {packed.dtype}"
    assert half_k * 2 == k, f"packed holds {half_k * 2} input channels, x has {k}"
    assert k % group_size == 0, f"K={k} is not a multiple of group_size {group_size}"
    groups = (n, k // group_size)
    for name, t in (("scales", scales), ("mins", mins)):
        assert tuple(t.shape) == groups and t.stride(1) == 1, f"{name} must be {groups} row-major, got {tuple(t.shape)}"
    assert x.device == packed.device == scales.device == mins.device, "inputs on different devices"


def int4_gemm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
              group_size: int) -> torch.Tensor:
    """(M, K) x-dtype activations times the (N, K) int4 weight, transposed → (M, N) in x's dtype."""
    _check(x, packed, scales, mins, group_size)
    m, k = x.shape
    n = packed.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    block_m = 16 if m <= 16 else 64
    block_k = min(64, group_size)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, 64))
    _int4_gemm_kernel[grid](out, x, packed, scales, mins, m, n, k,
                            out.stride(0), x.stride(0), packed.stride(0), scales.stride(0),
                            GROUP_SIZE=group_size, BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=block_k,
                            **dot_options(x.dtype))
    return out


def unpack_ref(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 → (N, K) codes."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).view(packed.shape[0], -1)


def int4_gemm_ref(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
                  group_size: int) -> torch.Tensor:
    codes = unpack_ref(packed).float()
    n, k = codes.shape
    w = codes.view(n, k // group_size, group_size) * scales.float()[..., None] + mins.float()[..., None]
    return (x.float() @ w.view(n, k).t()).to(x.dtype)
