import pytest
import torch

from livecast.kernels.int4_gemm import int4_gemm, int4_gemm_ref, unpack_ref


def _weights(n: int, k: int, group_size: int, device):
    packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, device=device)
    # LLM-sized weights (|w| ~ 0.02): a GPU rounds them to bf16 for its MMA, well inside bf16 tolerance
    scales = (torch.rand(n, k // group_size, device=device) * 0.004 + 0.001).to(torch.bfloat16)
    mins = (-8 * scales.float() + torch.randn(n, k // group_size, device=device) * 0.004).to(torch.bfloat16)
    return packed, scales, mins


@pytest.mark.parametrize("m,n,k,group_size", [(1, 64, 64, 32), (5, 96, 128, 64), (17, 48, 192, 32),
                                              (33, 128, 256, 128)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_gemm_matches_reference(m, n, k, group_size, dtype, poisoned, check_close, device):
    torch.manual_seed(m * 7 + n)
    x = torch.randn(m, k, device=device).to(dtype)
    packed, scales, mins = _weights(n, k, group_size, device)
    with poisoned():
        out = int4_gemm(x, packed, scales, mins, group_size)
    check_close(out, int4_gemm_ref(x, packed, scales, mins, group_size))


def test_reference_nibble_order_matches_int4linear(device):
    """The kernel layout is the one Int4Linear packs: low nibble = even input channel."""
    from livecast.engine.quant.int4 import quantize_rtn

    torch.manual_seed(0)
    weight = quantize_rtn(torch.randn(32, 64), 32)
    packed = weight.codes[:, 0::2] | (weight.codes[:, 1::2] << 4)
    assert torch.equal(unpack_ref(packed), weight.codes)
    x = torch.randn(3, 64)
    out = int4_gemm_ref(x, packed, weight.scales, weight.mins, 32)
    torch.testing.assert_close(out, x @ weight.dequantize().t(), atol=1e-4, rtol=1e-4)


def test_int4_gemm_refuses_mismatched_shapes(device):
    packed, scales, mins = _weights(32, 64, 32, device)
    with pytest.raises(AssertionError, match="input channels"):
        int4_gemm(torch.randn(2, 96, device=device), packed, scales, mins, 32)
    with pytest.raises(AssertionError, match="scales must be"):
        int4_gemm(torch.randn(2, 64, device=device), packed, scales[:, :1], mins, 32)
