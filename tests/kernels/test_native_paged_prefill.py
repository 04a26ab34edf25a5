"""The native causal prefill attention over the paged cache against its plain-torch reference
and the engine's gather + SDPA path, in every variant this CPU runs."""
import pytest
import torch

from livecast.engine.layers.attention import allocate_kv_cache
from livecast.engine.layers.attention import prefill_attention as sdpa_prefill
from livecast.kernels.native import paged_prefill

pytestmark = pytest.mark.skipif(paged_prefill.library() is None, reason="no native kernels on this machine")


def _variants(head_dim):
    return ["avx2", "auto"] + (["avx512"] if paged_prefill.wide(head_dim) else [])


def _case(num_blocks, block_size, kv_heads, heads, head_dim, q_len, seq_len, seed=0):
    torch.manual_seed(seed)
    k_cache, v_cache = (allocate_kv_cache(num_blocks, block_size, kv_heads, head_dim, torch.float32, "cpu",
                                          head_major=True).normal_() for _ in range(2))  # never zeros
    table = torch.randperm(num_blocks)[:-(-seq_len // block_size)].int()  # shuffled block ids
    qkv = torch.randn(q_len, heads + 2 * kv_heads, head_dim)
    return qkv[:, :heads], k_cache, v_cache, table  # q: a view with a row stride, as the model passes it


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (9, 3, 64), (8, 2, 128), (16, 4, 64), (6, 2, 8)])
@pytest.mark.parametrize("block_size", [8, 16])
@pytest.mark.parametrize("q_len,seq_len", [
    (1, 1), (16, 16), (17, 17), (100, 100),  # fresh prompts, at and off block boundaries
    (16, 48), (5, 37), (33, 64), (70, 103),  # chunks after a cached prefix (a chunked prefill or a prefix-cache hit)
    (1, 129),  # one token after a long prefix
])
def test_prefill_matches_the_reference(heads, kv_heads, head_dim, block_size, q_len, seq_len):
    q, k_cache, v_cache, table = _case(40, block_size, kv_heads, heads, head_dim, q_len, seq_len)
    scale = head_dim ** -0.5
    ref = paged_prefill.ref_prefill_attention(q, k_cache, v_cache, table, seq_len, scale)
    for variant in _variants(head_dim):
        out = paged_prefill.prefill_attention(q, k_cache, v_cache, table, seq_len, scale, variant)
        torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5, msg=variant)


@pytest.mark.parametrize("q_len,seq_len", [(300, 300), (64, 300)])
def test_prefill_matches_the_engines_sdpa_path(q_len, seq_len):
    q, k_cache, v_cache, table = _case(24, 16, 3, 9, 64, q_len, seq_len, seed=3)  # SmolLM2's shapes
    out = paged_prefill.prefill_attention(q, k_cache, v_cache, table, seq_len, 0.125)
    ref = sdpa_prefill(q, k_cache, v_cache, table, seq_len, 0.125)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def test_more_threads_than_tasks_and_one_thread_agree():
    q, k_cache, v_cache, table = _case(16, 8, 1, 4, 64, 9, 70, seed=5)  # one task: one KV head, one tile
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = paged_prefill.prefill_attention(q, k_cache, v_cache, table, 70, 0.1)
        torch.set_num_threads(max(2, before))
        many = paged_prefill.prefill_attention(q, k_cache, v_cache, table, 70, 0.1)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)  # each row's reduction order does not depend on the threads


def test_blocks_at_both_ends_of_a_large_cache():
    num_blocks, block_size, kv_heads, head_dim = 2048, 16, 8, 128  # 8 heads x 4M floats: 128 MiB per cache
    q, k_cache, v_cache, _ = _case(num_blocks, block_size, kv_heads, 8, head_dim, 20, 40, seed=1)
    table = torch.tensor([num_blocks - 1, 0, num_blocks - 2], dtype=torch.int32)
    out = paged_prefill.prefill_attention(q, k_cache, v_cache, table, 40, 0.1)
    ref = paged_prefill.ref_prefill_attention(q, k_cache, v_cache, table, 40, 0.1)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def test_bad_inputs_are_refused():
    q, k_cache, v_cache, table = _case(8, 8, 2, 4, 64, 4, 20)
    with pytest.raises(ValueError, match="int32"):
        paged_prefill.prefill_attention(q, k_cache, v_cache, table.long(), 20, 0.1)
    with pytest.raises(ValueError, match="cover"):
        paged_prefill.prefill_attention(q, k_cache, v_cache, table[:2], 20, 0.1)  # 16 slots for 20 tokens
    with pytest.raises(ValueError, match="cover"):
        paged_prefill.prefill_attention(q, k_cache, v_cache, table, 3, 0.1)  # more queries than tokens
    flat = torch.zeros(8, 8, 2, 64)
    with pytest.raises(ValueError, match="head-major"):
        paged_prefill.prefill_attention(q, flat, flat, table, 20, 0.1)
    assert not paged_prefill.wide(8)  # head_dim 8 never runs the 16-lane steps
    q8, k8, v8, t8 = _case(8, 8, 2, 4, 8, 4, 20)
    with pytest.raises(ValueError, match="variant"):
        paged_prefill.prefill_attention(q8, k8, v8, t8, 20, 0.1, "avx512")


def test_bench_rows_time_both_paths_on_the_same_inputs():
    from livecast.services.bench import kernels as bench

    row = bench.measure_prefill(24, 80, rounds=1)
    assert set(bench.PREFILL_HEADERS) <= set(row)
    assert row["native_cpu_us"] > 0 and row["sdpa_cpu_us"] > 0 and row["cpu_vs_sdpa"] > 0 and row["wall_vs_sdpa"] > 0
    assert row["max_err"] < 1e-5  # the two paths read the same cache and chunk
