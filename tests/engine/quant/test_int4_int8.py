import pytest
import torch

from livecast.engine.quant.int4 import Int4Linear, QuantizedWeight, quantize_rtn
from livecast.engine.quant.int8 import Int8Linear


def _close_to(out: torch.Tensor, ref: torch.Tensor) -> None:
    # bf16 activations and bf16 scale/zero in the packed op: ~1% of the output's range
    err = (out.float() - ref).abs().max().item()
    assert err <= 0.02 * ref.abs().max().item() + 1e-3, f"max error {err} vs range {ref.abs().max().item()}"


@pytest.mark.parametrize("n,k,group_size", [(16, 64, 32), (48, 128, 64), (96, 256, 128), (32, 576, 64),
                                            (64, 512, 256)])
@pytest.mark.parametrize("num_tokens", [1, 7, 33])
def test_int4_linear_matches_dequantized_reference(n, k, group_size, num_tokens):
    torch.manual_seed(n + k + num_tokens)
    weight = quantize_rtn(torch.randn(n, k), group_size)
    x = torch.randn(num_tokens, k)
    out = Int4Linear(weight)(x)
    assert out.shape == (num_tokens, n) and out.dtype == x.dtype
    _close_to(out, x @ weight.dequantize().t())


def test_int4_linear_reads_fractional_minimums_and_bias():
    """GGUF Q4_1 minimums are not integer zero points; the canonical form must carry them as-is."""
    torch.manual_seed(0)
    codes = torch.randint(0, 16, (32, 64), dtype=torch.uint8)
    weight = QuantizedWeight(codes, torch.rand(32, 2) * 0.1, torch.randn(32, 2) * 0.3, 32)
    bias = torch.randn(32)
    x = torch.randn(4, 2, 64)  # extra leading dims pass through
    out = Int4Linear(weight, bias)(x)
    _close_to(out, x @ weight.dequantize().t() + bias)


def test_dense_copy_takes_over_from_min_tokens():
    torch.manual_seed(1)
    weight = quantize_rtn(torch.randn(32, 64), 32)
    linear = Int4Linear(weight)
    linear.set_dense(torch.zeros(32, 64), min_tokens=8)  # a copy we can tell apart
    assert linear(torch.randn(7, 64)).abs().sum() > 0  # int4 below the threshold
    assert linear(torch.randn(8, 64)).abs().sum() == 0  # the dense copy from it on
    linear.set_dense(weight.dequantize(), min_tokens=8)
    x = torch.randn(16, 64)
    _close_to(linear(x), x @ weight.dequantize().t())


@pytest.mark.parametrize("n,k,group_size,message", [
    (40, 64, 32, "out_features 40 is not a multiple of 16"),
    (32, 100, 32, "in_features 100 is not a multiple of group_size 32"),
    (32, 96, 48, "group_size 48 is not one of"),
])
def test_odd_shapes_are_refused_with_the_reason(n, k, group_size, message):
    codes = torch.zeros(n, k, dtype=torch.uint8)
    groups = max(k // group_size, 1)
    weight = QuantizedWeight.__new__(QuantizedWeight)  # bypass its own check to reach the linear's
    weight.codes, weight.scales, weight.mins, weight.group_size = codes, torch.ones(n, groups), torch.zeros(n, groups), group_size
    with pytest.raises(ValueError, match=message) as info:
        Int4Linear(weight, name="layers.3.mlp.down_proj")
    assert "layers.3.mlp.down_proj" in str(info.value)


def test_quantized_weight_validates_its_own_shapes():
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        quantize_rtn(torch.randn(16, 100), 32)
    with pytest.raises(ValueError, match="scales"):
        QuantizedWeight(torch.zeros(16, 64, dtype=torch.uint8), torch.ones(16, 3), torch.zeros(16, 2), 32)


def test_rtn_error_is_within_half_a_step():
    torch.manual_seed(2)
    w = torch.randn(64, 128)
    q = quantize_rtn(w, 32)
    step = q.scales.repeat_interleave(32, dim=1)
    assert ((q.dequantize() - w).abs() <= step * 0.5 + 1e-3).all()


@pytest.mark.parametrize("num_tokens", [1, 9])
def test_int8_linear_matches_dequantized_reference(num_tokens):
    torch.manual_seed(3)
    w = torch.randn(96, 128)
    linear = Int8Linear(w)
    x = torch.randn(num_tokens, 128)
    _close_to(linear(x), x @ linear.dequantize().t())
    row_max = w.abs().amax(1, keepdim=True)
    # half an int8 step of the row, plus the bf16 rounding of its scale (up to 2^-8 relative)
    assert ((linear.dequantize() - w).abs() <= row_max / 254 + row_max / 256 + 1e-6).all()


def test_int8_kernel_choice_swaps_every_fused_int4_linear():
    """`weight_kernel=int8` re-quantizes each int4 linear per row from its own dequantized
    weights: the outputs stay within an int8 step of the int4 layer's, and the dense copy above
    the crossover still applies on top of the int8 kernel."""
    from torch import nn

    from livecast.engine.quant.apply import choose_kernel

    torch.manual_seed(3)
    weight = quantize_rtn(torch.randn(48, 128), 32)
    model = nn.Module()
    model.proj = Int4Linear(weight)
    x = torch.randn(5, 128)
    int4_out = model.proj(x)
    assert choose_kernel(model, {"proj": weight}, torch.device("cpu"), "int8") == "int8"
    assert isinstance(model.proj, Int8Linear)
    _close_to(model.proj(x), int4_out.float())
    model.proj.set_dense(weight.dequantize(), min_tokens=4)
    _close_to(model.proj(x), x @ weight.dequantize().t())
    # int4 asked for: nothing is swapped
    model.proj = Int4Linear(weight)
    assert choose_kernel(model, {"proj": weight}, torch.device("cpu"), "int4") == "int4"
    assert isinstance(model.proj, Int4Linear)
