"""The lean decode step's layers compute exactly what HF Llama's formulas compute, and the paged
cache's one-copy writes and gathers land on the same slots as a per-head reference."""
from __future__ import annotations

import pytest
import torch

from livecast.engine.layers.attention import allocate_kv_cache, decode_attention, gather_kv, head_major, write_kv
from livecast.engine.layers.norm import RMSNorm
from livecast.engine.layers.rotary import apply_rotary, rotary_tables


def _hf_rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_is_bit_identical_to_hf(dtype):
    torch.manual_seed(0)
    head_dim, max_pos = 64, 512
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.outer(torch.arange(max_pos).float(), inv)
    cache = torch.cat([freqs.cos(), freqs.sin()], -1)
    positions = torch.tensor([0, 5, 17, 511, 300])
    q = torch.randn(5, 9, head_dim, dtype=dtype)
    k = torch.randn(5, 3, head_dim, dtype=dtype)
    cos, sin = (t.to(dtype) for t in (freqs.cos()[positions], freqs.sin()[positions]))
    cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]
    rotated = apply_rotary(torch.cat([q, k], 1), rotary_tables(positions, cache, dtype))
    assert torch.equal(rotated[:, :9], q * cos + _hf_rotate_half(q) * sin)
    assert torch.equal(rotated[:, 9:], k * cos + _hf_rotate_half(k) * sin)


@pytest.mark.parametrize("hidden", [64, 576, 960, 2048])
def test_rms_norm_float32_matches_hf_bit_for_bit(hidden):
    torch.manual_seed(hidden)
    norm = RMSNorm(hidden, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(hidden))
    x, residual = torch.randn(7, hidden), torch.randn(7, hidden)
    s = x + residual
    hf = norm.weight * (s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5))
    out, new_residual = norm(x, residual)
    assert torch.equal(new_residual, s)
    assert torch.equal(out, hf)


def _cache(num_blocks=12, block_size=4, heads=3, head_dim=8):
    return allocate_kv_cache(num_blocks, block_size, heads, head_dim, torch.float32, "cpu", head_major=True)


def test_write_and_gather_match_a_per_head_reference():
    torch.manual_seed(1)
    k_cache, v_cache = _cache(), _cache()
    slots = torch.tensor([5, 0, 33, 47, 18])
    key, value = torch.randn(5, 3, 8), torch.randn(5, 3, 8)
    derived: dict = {}
    write_kv(key, value, k_cache, v_cache, slots, derived)
    for new, cache in ((key, k_cache), (value, v_cache)):
        flat = head_major(cache).reshape(3, -1, 8)
        for h in range(3):
            assert torch.equal(flat[h][slots], new[:, h])
    tables = torch.tensor([[1, 8, 4], [11, 0, 2]], dtype=torch.int32)
    got = gather_kv(k_cache, tables, 10, derived, "t")
    storage = head_major(k_cache)
    for h in range(3):
        for s in range(2):
            want = torch.cat([storage[h, b] for b in tables[s].tolist()])
            assert torch.equal(got[h, s], want)
    # the block ids were derived once and are reused (the V gather, every later layer)
    assert ("gather", "t") in derived and torch.equal(gather_kv(v_cache, tables, 10, derived, "t")[0, 0, :4],
                                                     head_major(v_cache)[0, 1])


def test_decode_attention_masks_the_padded_tail():
    torch.manual_seed(2)
    k_cache, v_cache = _cache(), _cache()
    tables = torch.tensor([[3, 7], [9, 2]], dtype=torch.int32)
    lens = torch.tensor([5, 7], dtype=torch.int32)
    for s in range(2):
        slots = torch.cat([tables[s, i] * 4 + torch.arange(4) for i in range(2)])[: lens[s]]
        write_kv(torch.randn(len(slots), 3, 8), torch.randn(len(slots), 3, 8), k_cache, v_cache, slots)
    q = torch.randn(2, 6, 8)
    out = decode_attention(q, k_cache, v_cache, tables, lens, 7, 0.35, {}, "d")
    for s in range(2):
        k = gather_kv(k_cache, tables[s:s + 1], 8)[:, 0, : lens[s]]  # (kvh, t, d)
        v = gather_kv(v_cache, tables[s:s + 1], 8)[:, 0, : lens[s]]
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[s].view(3, 2, 8), k, v, scale=0.35)  # 2 query heads per KV head
        torch.testing.assert_close(out[s], ref.reshape(6, 8), atol=1e-5, rtol=1e-5)
