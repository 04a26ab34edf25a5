"""Causal prefill attention over the paged KV cache for x86 CPUs (paged_prefill.c).

One chunk of `q_len` queries at the end of `seq_len` tokens, K/V read in place through the
sequence's block table (no gather copy), flash-style with an online softmax. float32, head-major
cache (`engine.layers.attention.allocate_kv_cache` with `head_major=True`). `ref_prefill_attention`
is the plain-torch reference that reads the same layout; the engine's gather + SDPA path
(`engine.layers.attention.prefill_attention`) computes the same thing and is compared in tests.
"""
from __future__ import annotations

import torch

from livecast.kernels.native.build import library
from livecast.kernels.native.paged_decode import _rows, _storage, supports

__all__ = ["VARIANTS", "prefill_attention", "ref_prefill_attention", "supports", "wide"]

VARIANTS = {"auto": 0, "avx2": 1, "avx512": 2}  # the C kernel's codes; auto: the widest this CPU runs


def wide(head_dim: int) -> bool:
    """Whether `auto` runs the AVX-512 steps for this head_dim on this CPU."""
    return bool(library().lc_prefill_wide(head_dim))


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                      seq_len: int, scale: float, variant: str = "auto") -> torch.Tensor:
    """q (q_len, num_heads, head_dim), any row stride -> (q_len, num_heads, head_dim); query i sees
    keys 0 .. seq_len - q_len + i. The chunk's own K/V must already be in the cache. `variant`
    forces the AVX2 or the AVX-512 steps (refused where the CPU lacks them)."""
    k_store, v_store = _storage(k_cache), _storage(v_cache)
    num_kv_heads, num_blocks, block_size, head_dim = k_store.shape
    q_len, num_heads = q.shape[:2]
    _rows(q, "q")
    if (block_table.dtype != torch.int32 or block_table.dim() != 1 or block_table.stride(0) != 1
            or block_table.shape[0] * block_size < seq_len or not 0 < q_len <= seq_len):
        raise ValueError(f"block_table must be int32, contiguous and cover {seq_len} tokens for {q_len} queries, "
                         f"got {block_table.dtype} {tuple(block_table.shape)}")
    out = torch.empty(q_len, num_heads, head_dim)
    status = library().lc_paged_prefill(
        q.data_ptr(), q.stride(0), q_len, seq_len, num_heads, num_kv_heads, head_dim, k_store.data_ptr(),
        v_store.data_ptr(), num_blocks, block_size, block_table.data_ptr(), scale, out.data_ptr(),
        torch.get_num_threads(), VARIANTS[variant])
    if status:
        raise (ValueError(f"shape or variant not supported: {num_heads} heads over {num_kv_heads}, "
                          f"head_dim {head_dim}, {variant}")
               if status == -1 else MemoryError())
    return out


def ref_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          block_table: torch.Tensor, seq_len: int, scale: float) -> torch.Tensor:
    """The same attention token by token through the block table, in float64 matmuls."""
    q_len, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    pos = torch.arange(seq_len)
    slots = block_table.long()[pos // block_size], pos % block_size
    k = k_cache[slots].double().repeat_interleave(num_heads // num_kv_heads, dim=1)  # (seq_len, h, d)
    v = v_cache[slots].double().repeat_interleave(num_heads // num_kv_heads, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    causal = pos[None, :] > (torch.arange(q_len) + seq_len - q_len)[:, None]
    probs = torch.softmax(scores.masked_fill(causal, float("-inf")), dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v).float()
