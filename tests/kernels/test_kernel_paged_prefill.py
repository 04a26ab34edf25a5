import pytest
import torch

from livecast.kernels.paged_prefill import paged_prefill, paged_prefill_ref

NUM_KV_HEADS = 2
BLOCK_SIZE = 16
# (new tokens, total context): fresh prompts at block boundaries, a prefix-cache hit whose new
# tokens straddle a block edge, and a later chunk of a chunked prefill longer than one 64-row tile.
CASES = [(1, 1), (BLOCK_SIZE, BLOCK_SIZE), (BLOCK_SIZE + 1, BLOCK_SIZE + 1), (5, 2 * BLOCK_SIZE + 3), (70, 100)]


def _packed_queries(q_lens: list[int], num_heads: int, head_dim: int, dtype, device):
    cu_seqlens_q = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q = torch.randn(sum(q_lens), num_heads, head_dim, device=device).to(dtype)
    return q, cu_seqlens_q


@pytest.mark.parametrize("group_size", [1, 3, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_matches_reference(dtype, head_dim, group_size, paged_kv, poisoned, check_close, device):
    torch.manual_seed(0)
    q_lens, seq_lens = zip(*CASES)
    k_cache, v_cache, block_tables, seq_lens = paged_kv(list(seq_lens), BLOCK_SIZE, NUM_KV_HEADS, head_dim, dtype)
    q, cu_seqlens_q = _packed_queries(list(q_lens), NUM_KV_HEADS * group_size, head_dim, dtype, device)
    scale = head_dim ** -0.5
    with poisoned():
        out = paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale)
    check_close(out, paged_prefill_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, scale))


@pytest.mark.parametrize("block_size", [1, 8, 128])
def test_prefill_block_sizes_and_short_chunks(block_size, paged_kv, poisoned, check_close, device):
    torch.manual_seed(1)
    q_lens, seq_lens = [1, 3, block_size + 1], [block_size, 40, block_size + 1]
    k_cache, v_cache, block_tables, seq_lens = paged_kv(seq_lens, block_size, NUM_KV_HEADS, 64, torch.float32)
    q, cu_seqlens_q = _packed_queries(q_lens, 8, 64, torch.float32, device)
    with poisoned():
        out = paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, 0.125,
                            max_seqlen_q=max(q_lens))
    check_close(out, paged_prefill_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, 0.125))


def test_prefill_launcher_rejects_bad_inputs(paged_kv, device):
    k_cache, v_cache, block_tables, seq_lens = paged_kv([5], BLOCK_SIZE, NUM_KV_HEADS, 64, torch.float32)
    q, cu_seqlens_q = _packed_queries([5], 4, 64, torch.float32, device)
    with pytest.raises(AssertionError, match="cu_seqlens_q"):
        paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q.long(), seq_lens, 0.125)
    with pytest.raises(AssertionError, match="head_dim"):
        paged_prefill(q[..., :32], k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, 0.125)
