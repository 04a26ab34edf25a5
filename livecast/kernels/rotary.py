"""Rotary position embedding, NeoX / HF-Llama style (rotate_half on the two halves of head_dim), in place.

`cos_sin_cache` `(max_position, head_dim)` fp32 holds cos in its first head_dim/2 columns and sin
in the last head_dim/2 (vLLM's layout), so one row load serves every head of a token.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(x_ptr, stride_head, num_heads, cos, sin, offs_d, mask_d,
                  HALF_DIM: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rotate all heads of one token, BLOCK_H heads at a time; x_ptr points at the token."""
    for h in range(0, num_heads, BLOCK_H):
        offs_h = h + tl.arange(0, BLOCK_H)
        mask = (offs_h[:, None] < num_heads) & mask_d[None, :]
        ptrs = x_ptr + offs_h[:, None] * stride_head + offs_d[None, :]  # (BLOCK_H, BLOCK_D) first half
        x1 = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(ptrs + HALF_DIM, mask=mask, other=0.0).to(tl.float32)
        tl.store(ptrs, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
        tl.store(ptrs + HALF_DIM, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rotary_embedding_kernel(
    positions_ptr, q_ptr, k_ptr, cos_sin_cache_ptr,
    stride_q_token, stride_q_head, stride_k_token, stride_k_head, stride_cache_pos,
    num_heads, num_kv_heads,
    HALF_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    position = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HALF_DIM
    cos = tl.load(cos_sin_cache_ptr + position * stride_cache_pos + offs_d, mask=mask_d, other=0.0)[None, :]
    sin = tl.load(cos_sin_cache_ptr + position * stride_cache_pos + HALF_DIM + offs_d, mask=mask_d, other=0.0)[None, :]
    _rotate_heads(q_ptr + token * stride_q_token, stride_q_head, num_heads, cos, sin, offs_d, mask_d, HALF_DIM, BLOCK_H)
    _rotate_heads(k_ptr + token * stride_k_token, stride_k_head, num_kv_heads, cos, sin, offs_d, mask_d,
                  HALF_DIM, BLOCK_H)


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor) -> None:
    """Rotate `q` `(num_tokens, num_heads, head_dim)` and `k` `(num_tokens, num_kv_heads, head_dim)` in
    place by `positions` int64 `(num_tokens,)`. q/k may be strided views of a fused qkv tensor."""
    assert q.dim() == 3 and k.dim() == 3, f"q, k must be 3-D, got {tuple(q.shape)}, {tuple(k.shape)}"
    num_tokens, num_heads, head_dim = q.shape
    assert k.shape[0] == num_tokens and k.shape[2] == head_dim, f"k {tuple(k.shape)} does not match q {tuple(q.shape)}"
    assert head_dim % 2 == 0, f"head_dim must be even, got {head_dim}"
    assert q.stride(-1) == 1 and k.stride(-1) == 1, "q/k head_dim must be contiguous"
    assert q.dtype == k.dtype, f"q dtype {q.dtype} != k dtype {k.dtype}"
    assert positions.shape == (num_tokens,) and positions.dtype in (torch.int64, torch.int32), \
        f"positions must be int64 ({num_tokens},), got {positions.dtype} {tuple(positions.shape)}"
    assert cos_sin_cache.dim() == 2 and cos_sin_cache.shape[1] == head_dim, \
        f"cos_sin_cache must be (max_position, {head_dim}), got {tuple(cos_sin_cache.shape)}"
    assert cos_sin_cache.dtype == torch.float32 and cos_sin_cache.stride(1) == 1, \
        "cos_sin_cache must be fp32 with contiguous rows"
    assert q.device == k.device == positions.device == cos_sin_cache.device, "inputs on different devices"
    if num_tokens == 0:
        return
    half_dim = head_dim // 2
    _rotary_embedding_kernel[(num_tokens,)](
        positions.contiguous(), q, k, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos_sin_cache.stride(0),
        num_heads, k.shape[1],
        HALF_DIM=half_dim, BLOCK_D=triton.next_power_of_2(half_dim),
        BLOCK_H=min(triton.next_power_of_2(max(num_heads, k.shape[1])), 16),
    )


def rotary_embedding_ref(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                         cos_sin_cache: torch.Tensor) -> None:
    cos, sin = cos_sin_cache[positions.long()].chunk(2, dim=-1)  # (num_tokens, head_dim / 2) each
    cos, sin = cos[:, None, :], sin[:, None, :]
    for x in (q, k):
        x1, x2 = x.float().chunk(2, dim=-1)
        x.copy_(torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype))
