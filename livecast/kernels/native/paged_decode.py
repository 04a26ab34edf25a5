"""Decode attention over the paged KV cache for x86 CPUs (paged_decode.c), and the KV write.

Reads K/V in place through the block tables (no gather into padded copies), all heads of a GQA
group per K/V row load. float32, head-major cache (`engine.layers.attention.allocate_kv_cache`
with `head_major=True`). The reference is the engine's batched torch path, which reads the
same layout (`engine.layers.attention.decode_attention`); tests compare the two.
"""
from __future__ import annotations

import torch

from livecast.kernels.native.build import library

MAX_GROUP = 16
MAX_HEAD_DIM = 256


def supports(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether the kernel takes these shapes and dtypes (else callers use the torch path)."""
    num_heads, head_dim = q.shape[-2:]
    num_kv_heads = k_cache.shape[2]
    return (q.dtype == k_cache.dtype == torch.float32 and q.device.type == "cpu" and head_dim % 8 == 0
            and head_dim <= MAX_HEAD_DIM and num_heads % num_kv_heads == 0
            and num_heads // num_kv_heads <= MAX_GROUP and library() is not None)


def _storage(cache: torch.Tensor) -> torch.Tensor:
    storage = cache.permute(2, 0, 1, 3)  # (num_kv_heads, num_blocks, block_size, head_dim)
    if not storage.is_contiguous() or cache.dtype != torch.float32:
        raise ValueError("the native kernels need a float32 head-major KV cache")
    return storage


def _rows(x: torch.Tensor, name: str) -> None:
    if x.dtype != torch.float32 or x.stride(-1) != 1 or x.stride(-2) != x.shape[-1]:
        raise ValueError(f"{name} must be float32 with contiguous heads, got {x.dtype} strides {x.stride()}")


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """key, value (num_tokens, num_kv_heads, head_dim), any token stride -> their slots (-1: skip)."""
    k_store, v_store = _storage(k_cache), _storage(v_cache)
    num_kv_heads, num_blocks, block_size, head_dim = k_store.shape
    _rows(key, "key"), _rows(value, "value")
    if key.shape[1:] != (num_kv_heads, head_dim) or value.shape != key.shape:
        raise ValueError(f"key {tuple(key.shape)} / value {tuple(value.shape)} do not fit the cache {tuple(k_store.shape)}")
    slots = slot_mapping if slot_mapping.dtype == torch.int64 else slot_mapping.long()
    if slots.shape != (key.shape[0],) or not slots.is_contiguous():
        raise ValueError(f"slot_mapping must be ({key.shape[0]},) contiguous, got {tuple(slots.shape)}")
    library().lc_kv_write(key.data_ptr(), key.stride(0), value.data_ptr(), value.stride(0), key.shape[0],
                          num_kv_heads, head_dim, k_store.data_ptr(), v_store.data_ptr(),
                          num_blocks * block_size, slots.data_ptr())


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    """q (num_seqs, num_heads, head_dim), any row stride -> (num_seqs, num_heads, head_dim)."""
    k_store, v_store = _storage(k_cache), _storage(v_cache)
    num_kv_heads, num_blocks, block_size, head_dim = k_store.shape
    num_seqs, num_heads = q.shape[:2]
    _rows(q, "q")
    if (block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32 or block_tables.stride(1) != 1
            or not context_lens.is_contiguous() or block_tables.shape[0] != num_seqs or context_lens.shape != (num_seqs,)):
        raise ValueError("block_tables (num_seqs, max_blocks) and context_lens (num_seqs,) must be int32, rows contiguous")
    out = torch.empty(num_seqs, num_heads, head_dim)
    status = library().lc_paged_decode(
        q.data_ptr(), q.stride(0), num_seqs, num_heads, num_kv_heads, head_dim, k_store.data_ptr(),
        v_store.data_ptr(), num_blocks, block_size, block_tables.data_ptr(), block_tables.stride(0),
        context_lens.data_ptr(), scale, out.data_ptr(), torch.get_num_threads())
    if status:
        raise (ValueError(f"shape not supported: {num_heads} heads over {num_kv_heads}, head_dim {head_dim}")
               if status == -1 else MemoryError())
    return out
