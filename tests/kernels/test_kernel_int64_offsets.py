"""Cache offsets past 2**31 elements: a real ~4.3 GB bf16 cache, of which only the pages of the
few blocks used are ever touched (torch.empty maps memory lazily), so it costs a few MB of RAM."""
import pytest
import torch

from livecast.kernels.cache import reshape_and_cache
from livecast.kernels.paged_attention import paged_attention_decode, paged_attention_decode_ref
from livecast.kernels.paged_prefill import paged_prefill, paged_prefill_ref

BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM = 16, 2, 64


@pytest.fixture
def huge_kv_cache(device):
    # K and V interleaved per block, so each view's block stride is 2 * 16 * 2 * 64 = 4096 elements.
    block_elems = 2 * BLOCK_SIZE * NUM_KV_HEADS * HEAD_DIM
    num_blocks = 2**31 // block_elems + 64
    try:
        kv = torch.empty(num_blocks, 2, BLOCK_SIZE, NUM_KV_HEADS, HEAD_DIM, dtype=torch.bfloat16, device=device)
    except (RuntimeError, MemoryError) as exc:  # no room even for the address space
        pytest.skip(f"cannot map a {num_blocks * block_elems * 2 / 2**30:.1f} GiB cache: {exc}")
    yield kv[:, 0], kv[:, 1]
    del kv


def test_cache_write_prefill_and_decode_past_int32_offsets(huge_kv_cache, poisoned, check_close, device):
    torch.manual_seed(0)
    k_cache, v_cache = huge_kv_cache
    num_blocks = k_cache.shape[0]
    context_lens = [BLOCK_SIZE + 1, 40]
    # Mostly blocks at the far end of the cache, one near the start.
    high = (num_blocks - 64 + torch.randperm(64)[:5]).tolist()
    block_tables = torch.tensor([[high[0], 1, 0], high[1:4]], dtype=torch.int32, device=device)
    assert high[0] * k_cache.stride(0) >= 2**31, "test must address past 2**31 elements"
    for block_id in (*high, 1):
        k_cache[block_id] = float("nan")  # slots past each context stay NaN
        v_cache[block_id] = float("nan")

    # 1. write every token's K/V through reshape_and_cache, the engine's path into the cache
    slots = [block_tables[s, i // BLOCK_SIZE].item() * BLOCK_SIZE + i % BLOCK_SIZE
             for s, n in enumerate(context_lens) for i in range(n)]
    num_tokens = len(slots)
    key = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device=device).bfloat16()
    value = torch.randn(num_tokens, NUM_KV_HEADS, HEAD_DIM, device=device).bfloat16()
    reshape_and_cache(key, value, k_cache, v_cache, torch.tensor(slots, device=device))
    assert torch.equal(k_cache[high[0]].reshape(-1)[:NUM_KV_HEADS * HEAD_DIM], key[0].reshape(-1))
    assert torch.equal(v_cache[block_tables[1, 2]][40 % BLOCK_SIZE - 1], value[-1])

    # 2. prefill over the whole prompts
    seq_lens = torch.tensor(context_lens, dtype=torch.int32, device=device)
    cu_seqlens_q = torch.tensor([0, context_lens[0], num_tokens], dtype=torch.int32, device=device)
    q = torch.randn(num_tokens, 8, HEAD_DIM, device=device).bfloat16()
    with poisoned():
        out = paged_prefill(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, 0.125)
    check_close(out, paged_prefill_ref(q, k_cache, v_cache, block_tables, cu_seqlens_q, seq_lens, 0.125))

    # 3. decode, single pass and split-K
    q = torch.randn(2, 8, HEAD_DIM, device=device).bfloat16()
    ref = paged_attention_decode_ref(q, k_cache, v_cache, block_tables, seq_lens, 0.125)
    for split_k in (False, True):
        with poisoned():
            out = paged_attention_decode(q, k_cache, v_cache, block_tables, seq_lens, 0.125,
                                         split_k=split_k, partition_size=16)
        check_close(out, ref)
