import pytest
import torch

from livecast.kernels.cache import reshape_and_cache, reshape_and_cache_ref


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("num_kv_heads,head_dim", [(2, 64), (3, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reshape_and_cache_matches_reference(dtype, num_kv_heads, head_dim, slot_dtype, device):
    torch.manual_seed(0)
    num_blocks, block_size, num_tokens = 6, 16, 21
    # One guard block in front of each cache catches a padding slot (-1) written one slot early.
    shape = (num_blocks + 1, block_size, num_kv_heads, head_dim)
    k_buffer = torch.full(shape, float("nan"), dtype=dtype, device=device)
    v_buffer = torch.full(shape, float("nan"), dtype=dtype, device=device)
    k_cache, v_cache = k_buffer[1:], v_buffer[1:]
    # key/value as strided views of a fused qkv projection, as the engine hands them over.
    qkv = torch.randn(num_tokens, 4 + 2 * num_kv_heads, head_dim, device=device).to(dtype)
    key, value = qkv[:, 4:4 + num_kv_heads], qkv[:, 4 + num_kv_heads:]
    slots = torch.randperm(num_blocks * block_size)[:num_tokens]
    slots[[3, 11]] = -1  # padding tokens
    slot_mapping = slots.to(slot_dtype).to(device)

    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    reshape_and_cache(key, value, k_cache, v_cache, slot_mapping)
    reshape_and_cache_ref(key, value, k_ref, v_ref, slot_mapping)
    # Bit-exact, and every slot not written (padding included) is still NaN.
    torch.testing.assert_close(k_cache, k_ref, atol=0, rtol=0, equal_nan=True)
    torch.testing.assert_close(v_cache, v_ref, atol=0, rtol=0, equal_nan=True)
    assert (~k_cache.isnan()).any(dim=(2, 3)).sum() == num_tokens - 2
    assert k_buffer[0].isnan().all() and v_buffer[0].isnan().all()


def test_reshape_and_cache_rejects_bad_inputs(device):
    k_cache = torch.zeros(4, 16, 2, 64, device=device)
    key = torch.randn(3, 2, 64, device=device)
    with pytest.raises(AssertionError, match="slot_mapping"):
        reshape_and_cache(key, key, k_cache, k_cache.clone(), torch.zeros(3, device=device))
    with pytest.raises(AssertionError, match="power of two"):
        odd_cache = torch.zeros(4, 12, 2, 64, device=device)
        reshape_and_cache(key, key, odd_cache, odd_cache.clone(), torch.zeros(3, dtype=torch.int64, device=device))
