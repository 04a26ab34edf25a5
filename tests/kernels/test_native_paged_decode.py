"""The native paged decode attention and KV write against the engine's torch path, which reads
the same head-major paged layout."""
import pytest
import torch

from livecast.engine.layers.attention import allocate_kv_cache, decode_attention as torch_decode, write_kv as torch_write
from livecast.kernels.native import paged_decode


def _caches(num_blocks, block_size, kv_heads, head_dim, seed=0):
    torch.manual_seed(seed)
    caches = [allocate_kv_cache(num_blocks, block_size, kv_heads, head_dim, torch.float32, "cpu", head_major=True)
              for _ in range(2)]
    for cache in caches:
        cache.normal_()  # random, never zeros: a read of the wrong row shows
    return caches


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 4, 64), (9, 3, 64), (8, 2, 128), (16, 1, 32), (6, 2, 8)])
@pytest.mark.parametrize("block_size", [8, 16])
def test_decode_matches_the_torch_path(heads, kv_heads, head_dim, block_size):
    num_blocks = 64
    k_cache, v_cache = _caches(num_blocks, block_size, kv_heads, head_dim)
    lens = torch.tensor([1, block_size - 1, block_size, block_size + 1, 3 * block_size, 5 * block_size + 3],
                        dtype=torch.int32)
    max_blocks = -(-int(lens.max()) // block_size)
    tables = torch.stack([torch.randperm(num_blocks)[:max_blocks] for _ in lens]).int()  # scattered blocks
    qk = torch.randn(len(lens), heads + kv_heads, head_dim)
    q = qk[:, :heads]  # a view with a row stride, as the model passes it
    scale = head_dim ** -0.5
    out = paged_decode.decode_attention(q, k_cache, v_cache, tables, lens, scale)
    ref = torch_decode(q, k_cache, v_cache, tables, lens, int(lens.max()), scale)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


def test_blocks_at_both_ends_of_a_large_cache():
    num_blocks, block_size, kv_heads, head_dim = 2048, 16, 8, 128  # 8 heads x 4M floats: 128 MiB per cache
    k_cache, v_cache = _caches(num_blocks, block_size, kv_heads, head_dim, seed=1)
    lens = torch.tensor([40, 17], dtype=torch.int32)
    tables = torch.tensor([[num_blocks - 1, 0, num_blocks - 2], [num_blocks - 3, 5, 0]], dtype=torch.int32)
    q = torch.randn(2, 8, head_dim)
    out = paged_decode.decode_attention(q, k_cache, v_cache, tables, lens, 0.1)
    torch.testing.assert_close(out, torch_decode(q, k_cache, v_cache, tables, lens, 40, 0.1), atol=2e-6, rtol=1e-5)


def test_write_matches_the_torch_path_and_skips_padding():
    num_blocks, block_size, kv_heads, head_dim = 16, 8, 3, 64
    k_cache, v_cache = _caches(num_blocks, block_size, kv_heads, head_dim)
    k_ref, v_ref = _caches(num_blocks, block_size, kv_heads, head_dim)
    qkv = torch.randn(5, (9 + 2 * kv_heads) * head_dim)
    key = qkv[:, 9 * head_dim:12 * head_dim].view(5, kv_heads, head_dim)
    value = qkv[:, 12 * head_dim:].view(5, kv_heads, head_dim)
    slots = torch.tensor([3, -1, 50, 17, 127])
    paged_decode.write_kv(key, value, k_cache, v_cache, slots)
    keep = slots >= 0
    torch_write(key[keep], value[keep], k_ref, v_ref, slots[keep])
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


def test_shapes_it_does_not_take_fall_back_or_are_refused():
    k_cache, v_cache = _caches(4, 8, 2, 12)
    assert not paged_decode.supports(torch.randn(1, 4, 12), k_cache)  # head_dim % 8
    k_cache, v_cache = _caches(4, 8, 1, 64)
    assert not paged_decode.supports(torch.randn(1, 32, 64), k_cache)  # 32 heads on one KV head: group > 16
    assert not paged_decode.supports(torch.randn(1, 4, 64).bfloat16(), k_cache)
    assert paged_decode.supports(torch.randn(1, 4, 64), k_cache)
    with pytest.raises(ValueError, match="int32"):
        paged_decode.decode_attention(torch.randn(1, 4, 64), k_cache, v_cache, torch.zeros(1, 1, dtype=torch.int64),
                                      torch.ones(1, dtype=torch.int32), 0.1)
    flat = torch.zeros(4, 8, 2, 64)  # not head-major
    with pytest.raises(ValueError, match="head-major"):
        paged_decode.decode_attention(torch.randn(1, 4, 64), flat, flat, torch.zeros(1, 1, dtype=torch.int32),
                                      torch.ones(1, dtype=torch.int32), 0.1)
