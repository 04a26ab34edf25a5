"""Writing new keys/values into the paged KV cache, and reading a sequence back out of it.

Layout (per layer): `k_cache`, `v_cache` are `(num_blocks, block_size, num_kv_heads, head_dim)`;
token slot = block_id * block_size + offset. A slot of -1 marks a padding token.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _reshape_and_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_key_token, stride_key_head, stride_value_token, stride_value_head,
    stride_cache_block, stride_cache_pos, stride_cache_head,
    num_kv_heads,
    BLOCK_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    # A padding token (slot -1) masks every head instead of returning early.
    mask = (offs_h[:, None] < tl.where(slot >= 0, num_kv_heads, 0)) & (offs_d[None, :] < HEAD_DIM)

    block_id = slot // BLOCK_SIZE
    cache_offs = (block_id * stride_cache_block + (slot % BLOCK_SIZE) * stride_cache_pos
                  + offs_h[:, None] * stride_cache_head + offs_d[None, :])  # (BLOCK_H, BLOCK_D)
    key = tl.load(key_ptr + token * stride_key_token + offs_h[:, None] * stride_key_head + offs_d[None, :],
                  mask=mask)
    value = tl.load(value_ptr + token * stride_value_token + offs_h[:, None] * stride_value_head
                    + offs_d[None, :], mask=mask)
    tl.store(k_cache_ptr + cache_offs, key.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_offs, value.to(v_cache_ptr.dtype.element_ty), mask=mask)


def check_kv_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """Shared launcher checks: both caches 4-D, same shape/strides/dtype/device, head_dim contiguous,
    power-of-two block size."""
    assert k_cache.dim() == 4, \
        f"k_cache must be (num_blocks, block_size, num_kv_heads, head_dim), got {tuple(k_cache.shape)}"
    assert k_cache.shape == v_cache.shape, f"k_cache {tuple(k_cache.shape)} != v_cache {tuple(v_cache.shape)}"
    assert k_cache.stride() == v_cache.stride(), f"k/v cache strides differ: {k_cache.stride()} vs {v_cache.stride()}"
    assert k_cache.dtype == v_cache.dtype, f"k/v cache dtypes differ: {k_cache.dtype} vs {v_cache.dtype}"
    assert k_cache.device == v_cache.device, "k/v caches on different devices"
    assert k_cache.stride(-1) == 1, f"cache head_dim must be contiguous, strides {k_cache.stride()}"
    block_size = k_cache.shape[1]
    assert block_size > 0 and block_size & (block_size - 1) == 0, f"block_size must be a power of two, got {block_size}"


def reshape_and_cache(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      slot_mapping: torch.Tensor) -> None:
    """Scatter `key`/`value` `(num_tokens, num_kv_heads, head_dim)` into the caches at `slot_mapping`
    `(num_tokens,)` int32/int64, in place; slots < 0 are skipped."""
    check_kv_cache(k_cache, v_cache)
    num_tokens, num_kv_heads, head_dim = key.shape
    assert value.shape == key.shape, f"value {tuple(value.shape)} != key {tuple(key.shape)}"
    assert k_cache.shape[2:] == (num_kv_heads, head_dim), \
        f"key heads/head_dim {(num_kv_heads, head_dim)} do not match cache {tuple(k_cache.shape[2:])}"
    assert key.stride(-1) == 1 and value.stride(-1) == 1, "key/value head_dim must be contiguous"
    assert slot_mapping.shape == (num_tokens,), f"slot_mapping must be ({num_tokens},), got {tuple(slot_mapping.shape)}"
    assert slot_mapping.dtype in (torch.int32, torch.int64), \
        f"slot_mapping must be int32/int64, got {slot_mapping.dtype}"
    assert key.device == k_cache.device == slot_mapping.device, "key, cache and slot_mapping must share a device"
    if num_tokens == 0:
        return
    _reshape_and_cache_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping.contiguous(),
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads,
        BLOCK_SIZE=k_cache.shape[1], HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
    )


def reshape_and_cache_ref(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          slot_mapping: torch.Tensor) -> None:
    block_size = k_cache.shape[1]
    for token, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        k_cache[slot // block_size, slot % block_size] = key[token]
        v_cache[slot // block_size, slot % block_size] = value[token]


def gather_paged(cache: torch.Tensor, block_table: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """One sequence's first `num_tokens` entries of a paged cache, `(num_tokens, num_kv_heads, head_dim)`;
    reads only the blocks that hold them (the references' view of the layout)."""
    block_size = cache.shape[1]
    num_blocks = -(-num_tokens // block_size)
    blocks = cache[block_table[:num_blocks].long()]  # (num_blocks, block_size, num_kv_heads, head_dim)
    return blocks.reshape(-1, *cache.shape[2:])[:num_tokens]
