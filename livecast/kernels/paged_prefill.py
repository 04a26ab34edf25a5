"""Causal attention of packed variable-length query chunks over the paged KV cache (prefill).

The new tokens' K/V are already in the cache (written by `reshape_and_cache`), so one kernel
covers a fresh prompt, a prompt whose prefix was cached, and each chunk of a chunked prefill:
query token i of a sequence with q_len new tokens and seq_len total tokens sits at position
seq_len - q_len + i and sees cache positions 0..that position.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from livecast.kernels.cache import gather_paged
from livecast.kernels.paged_attention import (LOG2E, check_attention_inputs, dot, dot_options, load_paged_tile,
                                     online_softmax_update)


@triton.jit
def _paged_prefill_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_q_ptr, seq_lens_ptr, qk_scale,
    stride_q_token, stride_q_head, stride_out_token, stride_out_head,
    stride_cache_block, stride_cache_pos, stride_cache_head, stride_bt_seq,
    QUERY_GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    kv_head = head // QUERY_GROUP_SIZE
    q_start = tl.load(cu_seqlens_q_ptr + seq).to(tl.int64)
    q_len = (tl.load(cu_seqlens_q_ptr + seq + 1) - q_start).to(tl.int32)
    seq_len = tl.load(seq_lens_ptr + seq)

    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < q_len
    pos_m = seq_len - q_len + offs_m  # (BLOCK_M,) cache position of each query token
    # The last key this query block sees; blocks past q_len (grid padding) loop zero times.
    kv_end = tl.where(m_block * BLOCK_M < q_len, seq_len - q_len + tl.minimum((m_block + 1) * BLOCK_M, q_len), 0)

    tokens = q_start + offs_m
    q = tl.load(q_ptr + tokens[:, None] * stride_q_token + head * stride_q_head + offs_d[None, :],
                mask=mask_m[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    # Every query sees key 0, so the first tile makes each row's running max finite.
    for n in range(0, kv_end, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < kv_end
        k = load_paged_tile(k_cache_ptr, block_table_ptr, offs_n, mask_n, kv_head, offs_d,
                            stride_cache_block, stride_cache_pos, stride_cache_head, BLOCK_SIZE)
        qk = dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        causal = (offs_n[None, :] <= pos_m[:, None]) & mask_n[None, :]
        qk = tl.where(causal, qk, float("-inf"))
        v = load_paged_tile(v_cache_ptr, block_table_ptr, offs_n, mask_n, kv_head, offs_d,
                            stride_cache_block, stride_cache_pos, stride_cache_head, BLOCK_SIZE)
        m_i, l_i, acc = online_softmax_update(qk, v, m_i, l_i, acc, DOT_PRECISION, DOT_UPCAST)
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + tokens[:, None] * stride_out_token + head * stride_out_head + offs_d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None])


def paged_prefill(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                  cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float, *,
                  max_seqlen_q: int | None = None) -> torch.Tensor:
    """Causal attention for packed queries `q` `(num_tokens, num_heads, head_dim)`.

    cu_seqlens_q int32 `(num_seqs + 1,)` delimits each sequence's new tokens in `q`; seq_lens int32
    `(num_seqs,)` is each sequence's total context including them. Returns `(num_tokens, num_heads,
    head_dim)`. Pass `max_seqlen_q` (the engine knows it) to size the grid without a device sync.
    """
    check_attention_inputs(q, k_cache, v_cache, block_tables)
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_seqs = seq_lens.shape[0]
    assert block_tables.shape[0] == num_seqs, f"block_tables has {block_tables.shape[0]} rows for {num_seqs} sequences"
    assert seq_lens.dtype == torch.int32 and seq_lens.dim() == 1, \
        f"seq_lens must be int32 (num_seqs,), got {seq_lens.dtype}"
    assert cu_seqlens_q.dtype == torch.int32 and cu_seqlens_q.shape == (num_seqs + 1,), \
        f"cu_seqlens_q must be int32 ({num_seqs + 1},), got {cu_seqlens_q.dtype} {tuple(cu_seqlens_q.shape)}"

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if num_tokens == 0 or num_seqs == 0:
        return out
    if max_seqlen_q is None:
        max_seqlen_q = int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    block_m = 64 if max_seqlen_q > 16 else 16  # decode-like chunks waste less of a small tile
    grid = (num_seqs, num_heads, triton.cdiv(max_seqlen_q, block_m))
    _paged_prefill_kernel[grid](
        out, q, k_cache, v_cache, block_tables, cu_seqlens_q.contiguous(), seq_lens.contiguous(), scale * LOG2E,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        QUERY_GROUP_SIZE=num_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=64, **dot_options(q.dtype),
    )
    return out


def paged_prefill_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                      cu_seqlens_q: torch.Tensor, seq_lens: torch.Tensor, scale: float) -> torch.Tensor:
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    for seq, seq_len in enumerate(seq_lens.tolist()):
        q_seq = q[cu[seq]:cu[seq + 1]].float()  # (q_len, num_heads, head_dim)
        q_len = q_seq.shape[0]
        k = gather_paged(k_cache, block_tables[seq], seq_len).float().repeat_interleave(num_heads // num_kv_heads, 1)
        v = gather_paged(v_cache, block_tables[seq], seq_len).float().repeat_interleave(num_heads // num_kv_heads, 1)
        scores = torch.einsum("qhd,khd->hqk", q_seq, k) * scale  # (num_heads, q_len, seq_len)
        positions = torch.arange(seq_len - q_len, seq_len)
        visible = torch.arange(seq_len)[None, :] <= positions[:, None]  # (q_len, seq_len)
        probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
        out[cu[seq]:cu[seq + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out
