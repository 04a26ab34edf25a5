"""Batched LoRA (kernels/lora.py): the torch references against a float64 loop, the segment
reference against the per-row one, and the Triton BGMV/SGMV kernels against the references (under
TRITON_INTERPRET=1 on a CPU) over mixed slots with -1 rows, ranks 8/16/48 and sizes off the blocks."""
from __future__ import annotations

import pytest
import torch

from livecast.kernels.lora import add_lora_reference, add_lora_segments_reference


def make_lora(num_rows: int, k: int, n: int, rank: int, num_slots: int, dtype: torch.dtype, seed: int = 0,
              device: str = "cpu") -> dict:
    """Random y, x, adapters scaled so the update is about as large as y, and mixed slots with -1."""
    g = torch.Generator().manual_seed(seed)
    slots = torch.randint(-1, num_slots, (num_rows,), generator=g)
    if num_rows >= num_slots + 1:  # every slot and -1 at least once
        slots[:num_slots + 1] = torch.arange(-1, num_slots)[torch.randperm(num_slots + 1, generator=g)]
    elif num_rows:  # at least one row with an adapter
        slots[0] = num_slots - 1
    return dict(y=torch.randn(num_rows, n, generator=g).to(dtype).to(device),
                x=torch.randn(num_rows, k, generator=g).to(dtype).to(device),
                a=(torch.randn(num_slots, rank, k, generator=g) / k ** 0.5).to(device),
                b=(torch.randn(num_slots, n, rank, generator=g) / rank ** 0.5).to(device),
                slots=slots.to(device), scales=(0.5 + 1.5 * torch.rand(num_slots, generator=g)).to(device))


def lora_float64(y, x, a, b, slots, scales) -> torch.Tensor:
    out = y.double().clone()
    for t, s in enumerate(slots.tolist()):
        if s >= 0:
            out[t] += scales[s].double() * (b[s].double() @ (a[s].double() @ x[t].double()))
    return out


def segments_of(slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of equal slots -> (seg_starts (G+1,), seg_slots (G,))."""
    values, counts = torch.unique_consecutive(slots, return_counts=True)
    return torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]), values


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_rows,k,n,rank,num_slots", [(1, 24, 40, 8, 1), (37, 100, 77, 16, 5), (9, 33, 20, 48, 8)])
def test_reference_matches_a_float64_loop(dtype, num_rows, k, n, rank, num_slots):
    case = make_lora(num_rows, k, n, rank, num_slots, dtype, seed=num_rows + k)
    expected = lora_float64(**case)
    before = case["y"].clone()
    add_lora_reference(**case)
    y = case["y"]
    untouched = case["slots"] < 0
    assert torch.equal(y[untouched], before[untouched])
    assert not torch.equal(y[~untouched], before[~untouched])
    if dtype == torch.float32:
        torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    else:  # rounded once from float32: within one ulp of the float64 result rounded
        ulp = expected.abs().clamp_min(1e-2) * (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10)
        assert ((y.double() - expected).abs() <= ulp).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_segment_reference_equals_the_per_row_reference(dtype):
    case = make_lora(37, 72, 50, 16, 4, dtype, seed=3)
    case["slots"] = torch.tensor([2] * 5 + [-1] * 3 + [0] * 11 + [3] + [-1] + [1] * 9 + [2] * 7)
    seg_starts, seg_slots = segments_of(case["slots"])
    assert len(seg_slots) == 7
    y_rows, y_segs = case["y"].clone(), case["y"].clone()
    add_lora_reference(y_rows, case["x"], case["a"], case["b"], case["slots"], case["scales"])
    add_lora_segments_reference(y_segs, case["x"], case["a"], case["b"], seg_starts, seg_slots, case["scales"])
    torch.testing.assert_close(y_segs, y_rows, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="ascend from 0 to 37"):
        add_lora_segments_reference(y_segs, case["x"], case["a"], case["b"], seg_starts - 1, seg_slots, case["scales"])
