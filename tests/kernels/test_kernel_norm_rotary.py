import pytest
import torch

from livecast.kernels.rmsnorm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from livecast.kernels.rotary import rotary_embedding, rotary_embedding_ref

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("hidden", [96, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_matches_reference(dtype, hidden, poisoned, check_close, device):
    torch.manual_seed(0)
    x = torch.randn(5, hidden + 8, device=device).to(dtype)[:, :hidden]  # strided rows
    weight = torch.randn(hidden, device=device).to(dtype)
    with poisoned():
        out = rms_norm(x, weight, 1e-6)
    check_close(out, rms_norm_ref(x, weight, 1e-6))


@pytest.mark.parametrize("hidden", [96, 256])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_matches_reference(dtype, hidden, check_close, device):
    torch.manual_seed(1)
    x = torch.randn(5, hidden, device=device).to(dtype)
    residual = torch.randn(5, hidden, device=device).to(dtype)
    weight = torch.randn(hidden, device=device).to(dtype)
    x_ref, residual_ref = x.clone(), residual.clone()
    fused_add_rms_norm(x, residual, weight, 1e-6)
    fused_add_rms_norm_ref(x_ref, residual_ref, weight, 1e-6)
    check_close(residual, residual_ref)
    check_close(x, x_ref)


def _cos_sin_cache(max_position: int, head_dim: int, device) -> torch.Tensor:
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.arange(max_position, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(device)  # (max_position, head_dim)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 4), (6, 2), (8, 2)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_on_fused_qkv_views(dtype, head_dim, num_heads, num_kv_heads, check_close, device):
    torch.manual_seed(2)
    num_tokens = 7
    qkv = torch.randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, device=device).to(dtype)
    q = qkv[:, :num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads, head_dim)
    positions = torch.randint(0, 4096, (num_tokens,), device=device)
    cos_sin_cache = _cos_sin_cache(4096, head_dim, device)
    qkv_ref = qkv.clone()
    q_ref = qkv_ref[:, :num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k_ref = qkv_ref[:, num_heads * head_dim:(num_heads + num_kv_heads) * head_dim].view(num_tokens, num_kv_heads,
                                                                                        head_dim)
    rotary_embedding(positions, q, k, cos_sin_cache)
    rotary_embedding_ref(positions, q_ref, k_ref, cos_sin_cache)
    check_close(qkv, qkv_ref)  # q and k rotated, v untouched
    torch.testing.assert_close(qkv[:, -num_kv_heads * head_dim:], qkv_ref[:, -num_kv_heads * head_dim:], atol=0, rtol=0)


def test_rotary_reference_is_hf_llama_rotate_half(device):
    torch.manual_seed(3)
    q, k = torch.randn(3, 2, 64, device=device), torch.randn(3, 1, 64, device=device)
    positions = torch.tensor([0, 5, 4095], device=device)
    cos, sin = _cos_sin_cache(4096, 64, device)[positions].chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]

    def rotate_half(x):
        return torch.cat([-x[..., 32:], x[..., :32]], dim=-1)

    expected_q, expected_k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    rotary_embedding(positions, q, k, _cos_sin_cache(4096, 64, device))
    torch.testing.assert_close(q, expected_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, expected_k, atol=1e-5, rtol=1e-5)
