"""The native AVX2 int4/int8 GEMMs against references that round the activations the same way
(int8 per block of 32), so the comparison is tight: only float summation order differs."""
import pytest
import torch

from livecast.kernels import native
from livecast.kernels.native import quant_gemm as qg


def test_the_native_kernels_build_on_this_machine():
    # x86 CI machines have AVX2 and gcc: a silent fallback to the slow path would hide a regression
    assert native.available(), native.unavailable()


def _round_activations(x: torch.Tensor) -> torch.Tensor:
    """What the kernel computes with: x rounded to int8 per block of 32 with scale amax / 127."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127 / amax, torch.zeros(()))
    return (torch.round(blocks * inv) * (amax / 127)).reshape(x.shape)


def _assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    scale = ref.abs().max().item() + 1e-6
    err = (out - ref).abs().max().item()
    assert err <= 2e-5 * scale * (ref.shape[1] ** 0.5) + 1e-6, f"max error {err} at output scale {scale}"


def _q4(n: int, k: int, group_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
    scales = (torch.rand(n, k // group_size, generator=g) * 0.1 + 0.01).half()
    mins = (torch.randn(n, k // group_size, generator=g) * 0.3).half()
    weight = (codes.view(n, k // group_size, group_size).float() * scales.float()[..., None]
              + mins.float()[..., None]).view(n, k)
    return codes, scales, mins, weight


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9, 33])
@pytest.mark.parametrize("n,k,group_size", [(8, 32, 32), (960, 576, 32), (576, 1536, 64), (64, 512, 128),
                                            (136, 256, 256)])
def test_q4_gemm_matches_the_dequantized_reference(m, n, k, group_size):
    codes, scales, mins, weight = _q4(n, k, group_size, seed=m * n + k)
    packed, s8, m8 = qg.pack_q4(codes, scales, mins)
    assert torch.equal(qg.unpack_q4(packed), codes)
    assert torch.equal(qg.dequantize_q4(packed, s8, m8, group_size), weight)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k))
    out = qg.q4_gemm(x, packed, s8, m8, group_size)
    assert out.shape == (m, n) and out.dtype == torch.float32
    _assert_close(out, _round_activations(x) @ weight.t())
    # and within the activation rounding of the exact product
    assert (out - x @ weight.t()).abs().max() <= 0.02 * (x @ weight.t()).abs().max()


@pytest.mark.parametrize("m", [1, 4, 6])
@pytest.mark.parametrize("n,k", [(8, 32), (49152 // 64, 576), (96, 1536)])
def test_q8_gemm_matches_the_dequantized_reference(m, n, k):
    g = torch.Generator().manual_seed(m + n)
    weight = torch.randn(n, k, generator=g)
    codes, scales = qg.quantize_q8(weight)
    deq = qg.dequantize_q8(codes, scales)
    blocks = weight.view(n, k // 32, 32)
    assert ((deq - weight).abs().view(n, k // 32, 32) <= blocks.abs().amax(-1, keepdim=True) / 254 * 1.01).all()
    assert torch.equal(qg.quantize_q8(deq)[0], codes)  # Q8_0 values keep their own codes
    x = torch.randn(m, k, generator=g)
    _assert_close(qg.q8_gemm(x, codes, scales), _round_activations(x) @ deq.t())


def test_zero_rows_empty_steps_strided_inputs_and_bf16_activations():
    codes, scales, mins, weight = _q4(16, 64, 32, seed=5)
    packed, s8, m8 = qg.pack_q4(codes, scales, mins)
    wide = torch.randn(3, 100)
    x = wide[:, 10:74]  # a row stride other than k
    x[1] = 0
    out = qg.q4_gemm(x, packed, s8, m8, 32)
    assert torch.equal(out[1], torch.zeros(16))  # a zero row: amax 0 must not divide by zero
    _assert_close(out, _round_activations(x.contiguous()) @ weight.t())
    out_bf16 = qg.q4_gemm(x.bfloat16(), packed, s8, m8, 32)
    assert out_bf16.dtype == torch.float32 and torch.isfinite(out_bf16).all()
    # no rows at all: a step whose chunks need no logits
    assert qg.q4_gemm(torch.empty(0, 64), packed, s8, m8, 32).shape == (0, 16)
    codes8, scales8 = qg.quantize_q8(weight)
    assert qg.q8_gemm(torch.empty(0, 64), codes8, scales8).shape == (0, 16)


@pytest.mark.parametrize("n,k,groups,message", [
    (12, 64, 2, "out_features 12 is not a multiple of 8"),
    (16, 96, 2, "in_features 96 is not a multiple of the group size 48, itself a multiple of 32"),
    (16, 64, 3, r"scales \(16, 3\) / mins \(16, 3\) do not fit codes \(16, 64\)"),
])
def test_odd_shapes_are_refused_with_the_reason(n, k, groups, message):
    with pytest.raises(ValueError, match=message):
        qg.pack_q4(torch.zeros(n, k, dtype=torch.uint8), torch.ones(n, groups), torch.zeros(n, groups))
    with pytest.raises(ValueError, match="in_features 40 is not a multiple of the group size 32"):
        qg.quantize_q8(torch.randn(8, 40))


def test_mismatched_layouts_are_refused():
    codes, scales, mins, _ = _q4(16, 64, 32, seed=1)
    packed, s8, m8 = qg.pack_q4(codes, scales, mins)
    with pytest.raises(ValueError, match=r"x must be \(rows, 64\)"):
        qg.q4_gemm(torch.randn(2, 32), packed, s8, m8, 32)
    with pytest.raises(ValueError, match="q4 layout mismatch"):
        qg.q4_gemm(torch.randn(2, 64), packed, s8.float(), m8, 32)
    with pytest.raises(ValueError, match="q4 layout mismatch"):
        qg.q4_gemm(torch.randn(2, 64), packed, s8, m8, 64)
