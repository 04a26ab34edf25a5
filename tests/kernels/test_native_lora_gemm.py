"""The native batched LoRA update (native/lora_gemm.c): close to the torch reference for float32
and bfloat16 with -1 rows, each row's bits independent of the rows beside it and of the thread
count, and the shapes it refuses."""
from __future__ import annotations

import pytest
import torch

from livecast.kernels import native
from livecast.kernels.lora import add_lora_reference
from livecast.kernels.native.lora_gemm import add_lora_native, supports
from tests.kernels.test_kernel_lora import make_lora

pytestmark = pytest.mark.skipif(not native.available(), reason="native kernels unavailable")
TOLERANCES = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows,k,n,rank,num_slots", [(1, 576, 960, 16, 1), (37, 100, 77, 16, 5),
                                                         (33, 33, 130, 48, 8), (5, 7, 3, 3, 2)])
def test_matches_the_reference(dtype, num_rows, k, n, rank, num_slots):
    case = make_lora(num_rows, k, n, rank, num_slots, dtype, seed=num_rows * 7 + k)
    before = case["y"].clone()
    expected = case["y"].clone()
    add_lora_reference(expected, *(case[key] for key in ("x", "a", "b", "slots", "scales")))
    add_lora_native(**case)
    torch.testing.assert_close(case["y"], expected, **TOLERANCES[dtype])
    untouched = case["slots"] < 0
    assert torch.equal(case["y"][untouched], before[untouched])
    assert not torch.equal(case["y"][~untouched], before[~untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_has_the_same_bits_alone_or_in_a_mixed_batch(dtype):
    case = make_lora(33, 200, 150, 48, 6, dtype, seed=11)
    x, a, b, slots, scales = (case[key] for key in ("x", "a", "b", "slots", "scales"))
    batch = case["y"].clone()
    add_lora_native(batch, x, a, b, slots, scales)
    for t in range(33):
        alone = case["y"][t:t + 1].clone()
        add_lora_native(alone, x[t:t + 1], a, b, slots[t:t + 1], scales)
        assert torch.equal(alone, batch[t:t + 1]), f"row {t} (slot {slots[t].item()}) differs"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one_thread = case["y"].clone()
        add_lora_native(one_thread, x, a, b, slots.to(torch.int32), scales)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one_thread, batch)


def test_bfloat16_rounds_the_float32_result_once_to_nearest_even():
    # bf16 x widens exactly, so the bf16 call computes the float32 call's sums and must round them as torch does.
    case = make_lora(19, 40, 203, 16, 3, torch.bfloat16, seed=2)  # 203 columns: full groups of 8 and a tail
    y32 = case["y"].float()
    add_lora_native(y32, case["x"].float(), case["a"], case["b"], case["slots"], case["scales"])
    add_lora_native(**case)
    assert torch.equal(case["y"], y32.bfloat16())


def test_strided_rows_leave_the_other_columns_alone():
    case = make_lora(6, 40, 24, 8, 3, torch.float32, seed=5)
    wide = torch.randn(6, 64)
    y = wide[:, 8:32]  # row stride 64, like one slice of a fused qkv output
    y.copy_(case["y"])
    outside = torch.cat([wide[:, :8], wide[:, 32:]], 1).clone()
    x = torch.randn(6, 80)[:, :40]
    x.copy_(case["x"])
    add_lora_native(y, x, case["a"], case["b"], case["slots"], case["scales"])
    add_lora_reference(case["y"], case["x"], case["a"], case["b"], case["slots"], case["scales"])
    torch.testing.assert_close(y, case["y"], **TOLERANCES[torch.float32])
    assert torch.equal(torch.cat([wide[:, :8], wide[:, 32:]], 1), outside)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bfloat16_adapter_weights_widen_exactly(dtype):
    """A and B stored in bfloat16 (the engine's slots) give the bits of the same weights in float32:
    they widen exactly and every sum keeps its order; the reference takes them too."""
    case = make_lora(21, 96, 130, 16, 4, dtype, seed=5)
    a16, b16 = case["a"].bfloat16(), case["b"].bfloat16()
    wide = case["y"].clone()
    add_lora_native(wide, case["x"], a16.float(), b16.float(), case["slots"], case["scales"])
    narrow = case["y"].clone()
    add_lora_native(narrow, case["x"], a16, b16, case["slots"], case["scales"])
    assert torch.equal(narrow, wide)
    expected = case["y"].clone()
    add_lora_reference(expected, case["x"], a16, b16, case["slots"], case["scales"])
    torch.testing.assert_close(narrow, expected, **TOLERANCES[dtype])
    with pytest.raises(ValueError, match="of one dtype"):
        add_lora_native(case["y"], case["x"], a16, case["b"], case["slots"], case["scales"])


def test_refuses_bad_shapes_slots_and_dtypes():
    case = make_lora(4, 16, 12, 8, 2, torch.float32, seed=1)
    y, x, a, b, slots, scales = (case[key] for key in ("y", "x", "a", "b", "slots", "scales"))
    assert supports(x, a) and not supports(x.half(), a) and not supports(x, a.double())
    before = y.clone()
    bad = {
        r"x \(T, K\), got y \(4, 12\), x \(3, 16\)": dict(x=x[:3]),
        "do not fit": dict(a=a[:, :, :8].contiguous()),
        r"want a \(S, R, 16\) and b \(S, 12, R\)": dict(b=b[:, :, :4].contiguous()),
        "contiguous float32": dict(a=a.double()),
        "scales must be": dict(scales=scales[:1]),
        "scales must be contiguous": dict(scales=torch.rand(4)[::2]),
        "share a float dtype": dict(x=x.bfloat16()),
        "native LoRA kernel takes": dict(y=y.half(), x=x.half()),
        "rows must be contiguous": dict(y=y.t().contiguous().t()),
        "slots must be int64": dict(slots=slots[:2]),
        r"slots must lie in \[-1, 2\)": dict(slots=torch.tensor([0, 1, 2, -1])),
        r"lie in \[-1, 2\)": dict(slots=torch.tensor([0, -2, 1, 1])),
    }
    for message, change in bad.items():
        args = dict(case, **change)
        with pytest.raises(ValueError, match=message):
            add_lora_native(**args)
    assert torch.equal(y, before), "a refused call wrote into y"
    empty = make_lora(0, 16, 12, 8, 2, torch.float32)
    add_lora_native(**empty)


def test_bench_lora_row_compares_native_with_the_reference():
    from livecast.services.bench import kernels as bench

    row = bench.measure_lora(9, "cpu", time_ms=lambda fn: fn() or 1.0)
    assert set(bench.LORA_HEADERS) <= set(row) and row["path"] == "native"
    assert row["max_err"] < 1e-4 and row["kernel_us"] > 0  # float32 against float32
