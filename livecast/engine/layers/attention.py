"""Paged attention: the one entry point the model calls, with a batched pure-torch path.

The batch is packed as [decode tokens (one query each) | prefill chunks]. New K/V are first
written into their cache slots; every query then reads K/V through its block table, so the
same code serves fresh prompts, cached prefixes and chunked prefill. The Triton kernels in
`kernels/` slot in behind `paged_attention` on CUDA; on a CPU with the native kernels
(`kernels.native.paged_decode`), a float32 cache is written and decoded in place by C loops, and
prefill chunks attend over it in place too (`kernels.native.paged_prefill`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from livecast.engine.backend import Backend, default_backend
from livecast.kernels.native import paged_decode, paged_prefill

# prefill chunks on the native backend: the C causal attention over the paged cache
# (kernels.native.paged_prefill); False keeps them on the gather + SDPA path, the reference
NATIVE_PREFILL = True


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # (num_tokens,) int64, -1 = padding
    num_decodes: int
    decode_block_tables: torch.Tensor  # (num_decodes, max_blocks) int32
    decode_context_lens: torch.Tensor  # (num_decodes,) int32
    decode_buckets: list[tuple[int, int, int]]  # (start, end, max context) over decodes sorted by length
    prefill_block_tables: torch.Tensor  # (num_prefills, max_blocks) int32
    prefill_cu_seqlens_q: torch.Tensor  # (num_prefills + 1,) int32, offsets from the first prefill token
    prefill_seq_lens: torch.Tensor  # (num_prefills,) int32, cached + new tokens
    # host copies of the prefill layout, for the torch path's per-chunk calls
    prefill_chunks: list[tuple[int, int, int]]  # (query start, query len, seq len)
    backend: Backend = field(default_factory=default_backend)
    # deterministic backends: each token's own block table row and context (its position + 1)
    token_block_tables: torch.Tensor | None = None  # (num_tokens, max_blocks) int32
    token_context_lens: torch.Tensor | None = None  # (num_tokens,) int32
    # index tensors and masks the torch path derives on the first layer and every other layer reuses
    derived: dict = field(default_factory=dict)


def allocate_kv_cache(num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                      device, head_major: bool, pin_memory: bool = False) -> torch.Tensor:
    """A (num_blocks, block_size, num_kv_heads, head_dim) cache. `head_major` stores it as
    (num_kv_heads, num_blocks, block_size, head_dim) underneath, which lets the torch path gather
    each head's blocks into contiguous (num_seqs, tokens, head_dim) matrices for plain matmuls."""
    if head_major:
        storage = torch.zeros((num_kv_heads, num_blocks, block_size, head_dim), dtype=dtype, device=device,
                              pin_memory=pin_memory)
        return storage.permute(1, 2, 0, 3)
    return torch.zeros((num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device,
                       pin_memory=pin_memory)


def head_major(cache: torch.Tensor) -> torch.Tensor:
    storage = cache.permute(2, 0, 1, 3)  # (num_kv_heads, num_blocks, block_size, head_dim)
    if not storage.is_contiguous():
        raise ValueError("the torch attention path needs a head-major KV cache (allocate_kv_cache(head_major=True))")
    return storage


def _derive(derived: dict | None, key, build):
    """`build()`, once per step: the first layer stores it in the step's `derived`, the rest reuse it."""
    if derived is None:
        return build()
    value = derived.get(key)
    if value is None:
        value = derived[key] = build()
    return value


def _per_head(rows: torch.Tensor, num_kv_heads: int, rows_per_head: int) -> torch.Tensor:
    """Row ids into a head-major cache flattened to 2-D: each head's copy of `rows`, offset."""
    heads = torch.arange(num_kv_heads, device=rows.device)[:, None] * rows_per_head
    return (heads + rows.long()[None, :]).reshape(-1)


def write_kv(key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor, derived: dict | None = None) -> None:
    """All heads' new rows in one row copy per cache (dim-0 index_copy_, the fast CPU path)."""
    for new, cache in ((key, k_cache), (value, v_cache)):
        storage = head_major(cache)
        num_kv_heads, num_blocks, block_size, head_dim = storage.shape
        rows = _derive(derived, "write", lambda: _per_head(slot_mapping, num_kv_heads, num_blocks * block_size))
        storage.view(-1, head_dim).index_copy_(0, rows, new.transpose(0, 1).reshape(-1, head_dim))


def gather_kv(cache: torch.Tensor, block_tables: torch.Tensor, num_tokens: int,
              derived: dict | None = None, key=None) -> torch.Tensor:
    """(num_kv_heads, num_seqs, padded_tokens, head_dim): each sequence's first `num_tokens`
    tokens per head, padded to whole blocks (callers mask or slice the tail). `key` names the
    block-id list in the step's `derived`, shared by the K and V gathers of every layer."""
    storage = head_major(cache)
    num_kv_heads, total_blocks, block_size, head_dim = storage.shape
    num_seqs, num_blocks = block_tables.shape[0], -(-num_tokens // block_size)
    ids = _derive(derived, ("gather", key), lambda: _per_head(block_tables[:, :num_blocks].reshape(-1),
                                                              num_kv_heads, total_blocks))
    # whole blocks as rows of a 2-d view: one contiguous row gather for all heads; padding included,
    # so the result feeds the matmuls without another copy
    out = torch.index_select(storage.view(num_kv_heads * total_blocks, -1), 0, ids)
    return out.view(num_kv_heads, num_seqs, num_blocks * block_size, head_dim)


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     block_tables: torch.Tensor, context_lens: torch.Tensor, max_context: int,
                     scale: float, derived: dict | None = None, key=None) -> torch.Tensor:
    """Single-token queries over paged K/V. q (num_seqs, num_heads, head_dim) -> same shape."""
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    k = gather_kv(k_cache, block_tables, max_context, derived, key)  # (kvh, s, t, d)
    v = gather_kv(v_cache, block_tables, max_context, derived, key)
    # the heads sharing one KV head act as that head's query rows: GQA without repeating K/V
    qh = q.view(num_seqs, num_kv_heads, group, head_dim).transpose(0, 1)  # (kvh, s, g, d)
    scores = torch.matmul(qh, k.transpose(-1, -2)).float() * scale  # (kvh, s, g, t)
    pad = _derive(derived, ("pad", key), lambda: (
        torch.arange(k.shape[2], device=q.device)[None, :] >= context_lens[:, None].long())[None, :, None, :])
    scores.masked_fill_(pad, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    out = torch.matmul(probs, v)  # (kvh, s, g, d)
    return out.transpose(0, 1).reshape(num_seqs, num_heads, head_dim)


def prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                      block_table: torch.Tensor, seq_len: int, scale: float,
                      new_k: torch.Tensor | None = None, new_v: torch.Tensor | None = None,
                      derived: dict | None = None, key=None) -> torch.Tensor:
    """Causal attention of one chunk of `q_len` queries sitting at the end of `seq_len` tokens."""
    q_len, num_heads, head_dim = q.shape
    if new_k is not None and seq_len == q_len:
        k, v = new_k, new_v  # nothing cached before this chunk: skip the gather
    else:
        k = gather_kv(k_cache, block_table[None], seq_len, derived, key)[:, 0, :seq_len].transpose(0, 1)  # (t, kvh, d)
        v = gather_kv(v_cache, block_table[None], seq_len, derived, key)[:, 0, :seq_len].transpose(0, 1)
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    gqa = num_heads != k.shape[1]
    if seq_len == q_len:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=gqa)
    else:
        rows = torch.arange(q_len, device=q.device)[:, None] + (seq_len - q_len)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= rows
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return out[0].transpose(0, 1)


def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """q (num_tokens, num_heads, head_dim); k, v (num_tokens, num_kv_heads, head_dim) -> like q."""
    if meta.backend.triton:
        return _triton_paged_attention(q, k, v, k_cache, v_cache, meta, scale)
    if meta.backend.deterministic:
        return _per_token_attention(q, k, v, k_cache, v_cache, meta, scale)
    outs = []
    native = _derive(meta.derived, "native", lambda: meta.backend.native and paged_decode.supports(q, k_cache))
    if native:
        paged_decode.write_kv(k, v, k_cache, v_cache, meta.slot_mapping)
        n = meta.num_decodes
        if n:  # every decode in one call, each at its own length: no buckets, no gathers
            outs.append(paged_decode.decode_attention(q[:n], k_cache, v_cache, meta.decode_block_tables,
                                                      meta.decode_context_lens, scale))
        buckets = ()
    else:
        write_kv(k, v, k_cache, v_cache, meta.slot_mapping, meta.derived)
        buckets = meta.decode_buckets
    for start, end, max_context in buckets:
        outs.append(decode_attention(q[start:end], k_cache, v_cache, meta.decode_block_tables[start:end],
                                     meta.decode_context_lens[start:end], max_context, scale,
                                     meta.derived, ("decode", start)))
    for i, (start, q_len, seq_len) in enumerate(meta.prefill_chunks):
        sl = slice(start, start + q_len)
        if native and NATIVE_PREFILL:  # the chunk's K/V are in the cache already
            outs.append(paged_prefill.prefill_attention(q[sl], k_cache, v_cache, meta.prefill_block_tables[i],
                                                        seq_len, scale))
            continue
        outs.append(prefill_attention(q[sl], k_cache, v_cache, meta.prefill_block_tables[i], seq_len,
                                      scale, k[sl], v[sl], meta.derived, ("prefill", i)))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _per_token_attention(q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """Batch-invariant attention: every query, prefill or decode, is one single-token query over
    its sequence's float32 cache up to its own position, in the one native kernel (a fixed order
    per row and head, no split of the context), after all of the step's new K/V are written."""
    paged_decode.write_kv(k.float(), v.float(), k_cache, v_cache, meta.slot_mapping)
    out = paged_decode.decode_attention(q.float(), k_cache, v_cache, meta.token_block_tables,
                                        meta.token_context_lens, scale)
    return out.to(q.dtype)


def _triton_paged_attention(q, k, v, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    from livecast.kernels.cache import reshape_and_cache
    from livecast.kernels.paged_attention import paged_attention_decode
    from livecast.kernels.paged_prefill import paged_prefill

    reshape_and_cache(k, v, k_cache, v_cache, meta.slot_mapping)
    n = meta.num_decodes
    parts = []
    if n:
        parts.append(paged_attention_decode(q[:n], k_cache, v_cache, meta.decode_block_tables,
                                            meta.decode_context_lens, scale))
    if meta.prefill_chunks:
        parts.append(paged_prefill(q[n:], k_cache, v_cache, meta.prefill_block_tables,
                                   meta.prefill_cu_seqlens_q, meta.prefill_seq_lens, scale,
                                   max_seqlen_q=max(q_len for _, q_len, _ in meta.prefill_chunks)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)
