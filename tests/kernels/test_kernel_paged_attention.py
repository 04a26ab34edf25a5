import pytest
import torch

from livecast.kernels.paged_attention import paged_attention_decode, paged_attention_decode_ref

NUM_KV_HEADS = 2


@pytest.mark.parametrize("split_k", [False, True])
@pytest.mark.parametrize("group_size", [1, 3, 4])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_matches_reference(dtype, head_dim, group_size, split_k, paged_kv, poisoned, check_close, device):
    torch.manual_seed(0)
    block_size = 16
    # Block-boundary lengths, plus one that spans several split-K partitions of 32 tokens.
    context_lens = [1, block_size, block_size + 1, 4 * block_size + 7]
    k_cache, v_cache, block_tables, context_lens = paged_kv(context_lens, block_size, NUM_KV_HEADS, head_dim, dtype)
    q = torch.randn(len(context_lens), NUM_KV_HEADS * group_size, head_dim, device=device).to(dtype)
    scale = head_dim ** -0.5
    with poisoned():
        out = paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, scale,
                                     split_k=split_k, partition_size=32)
    check_close(out, paged_attention_decode_ref(q, k_cache, v_cache, block_tables, context_lens, scale))


@pytest.mark.parametrize("block_size", [1, 8, 32, 128])
def test_decode_block_sizes(block_size, paged_kv, poisoned, check_close, device):
    torch.manual_seed(1)
    context_lens = [1, block_size, block_size + 1, 70]
    k_cache, v_cache, block_tables, context_lens = paged_kv(context_lens, block_size, NUM_KV_HEADS, 64, torch.float32)
    q = torch.randn(len(context_lens), 8, 64, device=device)
    with poisoned():
        out = paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, 0.125)
    check_close(out, paged_attention_decode_ref(q, k_cache, v_cache, block_tables, context_lens, 0.125))


def test_split_k_equals_single_pass_on_long_context(paged_kv, poisoned, check_close, device):
    torch.manual_seed(2)
    k_cache, v_cache, block_tables, context_lens = paged_kv([2500, 1100], 16, 1, 64, torch.float32)
    q = torch.randn(2, 4, 64, device=device)
    with poisoned():
        single = paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, 0.125, split_k=False)
        split = paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, 0.125, split_k=True)
        auto = paged_attention_decode(q, k_cache, v_cache, block_tables, context_lens, 0.125)
    ref = paged_attention_decode_ref(q, k_cache, v_cache, block_tables, context_lens, 0.125)
    check_close(single, ref)
    check_close(split, ref)
    check_close(split, single)
    torch.testing.assert_close(auto, split, atol=0, rtol=0)  # few programs, long table: auto picks split-K


def test_empty_context_gives_zeros(paged_kv, device):
    k_cache, v_cache, block_tables, _ = paged_kv([5], 16, 1, 64, torch.float32)
    q = torch.randn(1, 1, 64, device=device)
    zero_len = torch.zeros(1, dtype=torch.int32, device=device)
    for split_k in (False, True):
        out = paged_attention_decode(q, k_cache, v_cache, block_tables, zero_len, 0.125, split_k=split_k,
                                     partition_size=16)
        assert torch.equal(out, torch.zeros_like(out))


def test_launcher_rejects_bad_inputs(paged_kv, device):
    k_cache, v_cache, block_tables, context_lens = paged_kv([5], 16, 2, 64, torch.float32)
    q = torch.randn(1, 4, 64, device=device)
    with pytest.raises(AssertionError, match="num_kv_heads"):
        paged_attention_decode(q[:, :3], k_cache, v_cache, block_tables, context_lens, 0.125)
    with pytest.raises(AssertionError, match="block_tables must be int32"):
        paged_attention_decode(q, k_cache, v_cache, block_tables.long(), context_lens, 0.125)
    with pytest.raises(AssertionError, match="dtype"):
        paged_attention_decode(q.double(), k_cache, v_cache, block_tables, context_lens, 0.125)
