"""Decode attention over the paged KV cache: one query token per sequence.

Each program owns one (sequence, kv head) pair and all the query heads that share that kv head
(GQA), so a K/V tile is read once per group. Long contexts with few sequences leave most SMs
idle, so the split-K (flash-decoding) variant also splits the context into partitions of
`partition_size` tokens and a second kernel merges the partial softmaxes.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from livecast.kernels.cache import check_kv_cache, gather_paged

LOG2E = 1.4426950408889634


@triton.jit
def load_paged_tile(cache_ptr, block_table_ptr, offs_n, mask_n, kv_head, offs_d,
                    stride_cache_block, stride_cache_pos, stride_cache_head, BLOCK_SIZE: tl.constexpr):
    """Gather the K or V rows of tokens `offs_n` (BLOCK_N,) of one sequence → (BLOCK_N, HEAD_DIM).
    Tokens are gathered one by one, so any block size works; masked tokens read no table entry."""
    block_ids = tl.load(block_table_ptr + offs_n // BLOCK_SIZE, mask=mask_n, other=0).to(tl.int64)
    # int64: block_id * stride_cache_block passes 2**31 elements on caches of a few GiB.
    offs = block_ids * stride_cache_block + (offs_n % BLOCK_SIZE) * stride_cache_pos + kv_head * stride_cache_head
    return tl.load(cache_ptr + offs[:, None] + offs_d[None, :], mask=mask_n[:, None], other=0.0)


@triton.jit
def dot(a, b, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """tl.dot with an fp32 accumulator; DOT_UPCAST feeds it fp32 copies (see `dot_options`)."""
    if DOT_UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def online_softmax_update(qk, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """One tile of flash attention: fold masked scores `qk` (log2 units) and values `v` into the
    running max `m_i`, denominator `l_i` and accumulator `acc`."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, DOT_PRECISION, DOT_UPCAST)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc


def dot_options(dtype: torch.dtype) -> dict:
    # fp32 inputs get exact fp32 products, not tf32. Triton's interpreter multiplies bf16 bit
    # patterns as integers in tl.dot (triton-lang/triton#11584), so there the bf16 tiles are widened
    # to fp32 first: the same products a bf16 MMA computes exactly, accumulated in fp32 as well.
    upcast = dtype == torch.bfloat16 and triton.knobs.runtime.interpret
    return dict(DOT_PRECISION="ieee" if dtype == torch.float32 or upcast else "tf32", DOT_UPCAST=upcast)


@triton.jit
def _paged_attention_decode_kernel(
    out_ptr, tmp_out_ptr, max_logits_ptr, exp_sums_ptr,
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr, qk_scale,
    stride_q_seq, stride_q_head, stride_out_seq, stride_out_head,
    stride_cache_block, stride_cache_pos, stride_cache_head, stride_bt_seq,
    QUERY_GROUP_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, PARTITION_SIZE: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    part = tl.program_id(2)
    num_parts = tl.num_programs(2)
    context_len = tl.load(context_lens_ptr + seq)
    if PARTITION_SIZE > 0:
        start = part * PARTITION_SIZE
        end = tl.minimum(start + PARTITION_SIZE, context_len)
    else:
        start = 0
        end = context_len

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * QUERY_GROUP_SIZE + offs_g  # (BLOCK_G,) query heads of this kv head
    mask_g = offs_g < QUERY_GROUP_SIZE
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_q_seq + heads[:, None] * stride_q_head + offs_d[None, :],
                mask=mask_g[:, None], other=0.0)  # (BLOCK_G, HEAD_DIM)
    block_table_ptr = block_tables_ptr + seq.to(tl.int64) * stride_bt_seq

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], dtype=tl.float32)
    for n in range(start, end, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        k = load_paged_tile(k_cache_ptr, block_table_ptr, offs_n, mask_n, kv_head, offs_d,
                            stride_cache_block, stride_cache_pos, stride_cache_head, BLOCK_SIZE)
        qk = dot(q, tl.trans(k), DOT_PRECISION, DOT_UPCAST) * qk_scale  # (BLOCK_G, BLOCK_N), log2 units
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        v = load_paged_tile(v_cache_ptr, block_table_ptr, offs_n, mask_n, kv_head, offs_d,
                            stride_cache_block, stride_cache_pos, stride_cache_head, BLOCK_SIZE)
        m_i, l_i, acc = online_softmax_update(qk, v, m_i, l_i, acc, DOT_PRECISION, DOT_UPCAST)
    # An empty context (a padding sequence) yields zeros rather than 0/0.
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]

    if PARTITION_SIZE > 0:
        # Partial results (num_seqs, num_heads, num_parts[, HEAD_DIM]); partitions past the end are
        # never read by the reduction, so they write nothing.
        row = (seq * tl.num_programs(1) * QUERY_GROUP_SIZE + heads).to(tl.int64) * num_parts + part
        mask_part = offs_g < tl.where(start < context_len, QUERY_GROUP_SIZE, 0)
        tl.store(max_logits_ptr + row, m_i, mask=mask_part)
        tl.store(exp_sums_ptr + row, l_i, mask=mask_part)
        tl.store(tmp_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=mask_part[:, None])
    else:
        tl.store(out_ptr + seq.to(tl.int64) * stride_out_seq + heads[:, None] * stride_out_head + offs_d[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask_g[:, None])


@triton.jit
def _paged_attention_reduce_kernel(
    out_ptr, tmp_out_ptr, max_logits_ptr, exp_sums_ptr, context_lens_ptr,
    stride_out_seq, stride_out_head, max_num_parts,
    HEAD_DIM: tl.constexpr, PARTITION_SIZE: tl.constexpr, BLOCK_P: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    num_parts = tl.cdiv(tl.load(context_lens_ptr + seq), PARTITION_SIZE)
    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_p = offs_p < num_parts
    row = (seq * tl.num_programs(1) + head).to(tl.int64) * max_num_parts + offs_p  # (BLOCK_P,)
    m = tl.load(max_logits_ptr + row, mask=mask_p, other=float("-inf"))
    m_max = tl.where(num_parts > 0, tl.max(m, 0), 0.0)
    weights = tl.exp2(m - m_max) * tl.load(exp_sums_ptr + row, mask=mask_p, other=0.0)  # (BLOCK_P,)
    tmp = tl.load(tmp_out_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], mask=mask_p[:, None], other=0.0)
    total = tl.sum(weights, 0)
    out = tl.sum(weights[:, None] * tmp, 0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + seq.to(tl.int64) * stride_out_seq + head * stride_out_head + offs_d,
             out.to(out_ptr.dtype.element_ty))


def check_attention_inputs(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor) -> None:
    """Launcher checks shared by decode and prefill; q is `(num_tokens or num_seqs, num_heads, head_dim)`."""
    check_kv_cache(k_cache, v_cache)
    assert q.dim() == 3, f"q must be (tokens, num_heads, head_dim), got {tuple(q.shape)}"
    num_heads, head_dim = q.shape[1:]
    num_kv_heads, cache_head_dim = k_cache.shape[2:]
    assert head_dim == cache_head_dim, f"q head_dim {head_dim} != cache head_dim {cache_head_dim}"
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, f"head_dim must be a power of two >= 16, got {head_dim}"
    assert num_heads % num_kv_heads == 0, f"num_heads {num_heads} not a multiple of num_kv_heads {num_kv_heads}"
    assert q.dtype == k_cache.dtype, f"q dtype {q.dtype} != cache dtype {k_cache.dtype}"
    assert q.stride(-1) == 1, f"q head_dim must be contiguous, strides {q.stride()}"
    assert q.device == k_cache.device == block_tables.device, "q, caches and block_tables must share a device"
    assert block_tables.dtype == torch.int32 and block_tables.dim() == 2 and block_tables.stride(1) == 1, \
        f"block_tables must be int32 (num_seqs, max_blocks_per_seq) with contiguous rows, got {block_tables.dtype} " \
        f"{tuple(block_tables.shape)} strides {block_tables.stride()}"


def split_k_default(num_seqs: int, num_kv_heads: int, max_context_len: int, partition_size: int = 512) -> bool:
    """The launcher's choice: split when a context may span several partitions and there are too few
    (sequence, kv head) programs to fill a GPU's SMs a few times over."""
    return max_context_len > partition_size and num_seqs * num_kv_heads < 512


def paged_attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float, *,
                           split_k: bool | None = None, partition_size: int = 512) -> torch.Tensor:
    """Attention of one query token per sequence over its paged context.

    q `(num_seqs, num_heads, head_dim)`; block_tables int32 `(num_seqs, max_blocks_per_seq)`;
    context_lens int32 `(num_seqs,)`. Returns `(num_seqs, num_heads, head_dim)` in q's dtype.
    `split_k=None` lets `split_k_default` choose, bounding the context by the block table's width so
    the choice never syncs with the device; True/False force either path.
    """
    check_attention_inputs(q, k_cache, v_cache, block_tables)
    num_seqs, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    assert block_tables.shape[0] == num_seqs, f"block_tables has {block_tables.shape[0]} rows for {num_seqs} sequences"
    assert context_lens.dtype == torch.int32 and context_lens.shape == (num_seqs,), \
        f"context_lens must be int32 ({num_seqs},), got {context_lens.dtype} {tuple(context_lens.shape)}"
    assert partition_size >= 16 and partition_size & (partition_size - 1) == 0, \
        f"partition_size must be a power of two >= 16, got {partition_size}"

    group_size = num_heads // num_kv_heads
    block_n = min(64, partition_size)
    max_context_len = block_tables.shape[1] * block_size
    if split_k is None:
        split_k = split_k_default(num_seqs, num_kv_heads, max_context_len, partition_size)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if num_seqs == 0:
        return out
    context_lens = context_lens.contiguous()
    meta = dict(QUERY_GROUP_SIZE=group_size, HEAD_DIM=head_dim, BLOCK_SIZE=block_size,
                BLOCK_G=max(16, triton.next_power_of_2(group_size)), BLOCK_N=block_n, **dot_options(q.dtype))
    args = (q, k_cache, v_cache, block_tables, context_lens, scale * LOG2E,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0))
    if not split_k:
        _paged_attention_decode_kernel[(num_seqs, num_kv_heads, 1)](
            out, out, out, out, *args, PARTITION_SIZE=0, **meta)
        return out

    max_num_parts = max(triton.cdiv(max_context_len, partition_size), 1)
    tmp_out = torch.empty(num_seqs, num_heads, max_num_parts, head_dim, dtype=torch.float32, device=q.device)
    max_logits = torch.empty(num_seqs, num_heads, max_num_parts, dtype=torch.float32, device=q.device)
    exp_sums = torch.empty_like(max_logits)
    _paged_attention_decode_kernel[(num_seqs, num_kv_heads, max_num_parts)](
        out, tmp_out, max_logits, exp_sums, *args, PARTITION_SIZE=partition_size, **meta)
    _paged_attention_reduce_kernel[(num_seqs, num_heads)](
        out, tmp_out, max_logits, exp_sums, context_lens, out.stride(0), out.stride(1), max_num_parts,
        HEAD_DIM=head_dim, PARTITION_SIZE=partition_size, BLOCK_P=triton.next_power_of_2(max_num_parts))
    return out


def paged_attention_decode_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float) -> torch.Tensor:
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    for seq, context_len in enumerate(context_lens.tolist()):
        k = gather_paged(k_cache, block_tables[seq], context_len).float()  # (context_len, num_kv_heads, head_dim)
        v = gather_paged(v_cache, block_tables[seq], context_len).float()
        k = k.repeat_interleave(num_heads // num_kv_heads, dim=1)
        v = v.repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("hd,thd->ht", q[seq].float(), k) * scale  # (num_heads, context_len)
        probs = torch.softmax(scores, dim=-1) if context_len > 0 else scores
        out[seq] = torch.einsum("ht,thd->hd", probs, v).to(q.dtype)
    return out

