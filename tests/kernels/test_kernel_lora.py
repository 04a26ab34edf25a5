"""Batched LoRA (kernels/lora.py): the torch references against a float64 loop, the segment
reference against the per-row one, and the Triton BGMV/SGMV kernels against the references (under
TRITON_INTERPRET=1 on a CPU) over mixed slots with -1 rows, ranks 8/16/48 and sizes off the blocks."""
from __future__ import annotations

import pytest
import torch

from livecast.kernels import lora
from livecast.kernels.lora import (
    add_lora_bgmv,
    add_lora_reference,
    add_lora_segments_reference,
    add_lora_sgmv,
)

SHAPES = [(1, 24, 40, 8, 1), (37, 100, 77, 16, 5), (9, 33, 130, 48, 8)]  # T, K, N, R, S


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
@pytest.mark.parametrize("num_rows,k,n,rank,num_slots", SHAPES)
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


def run_both(case: dict, launch, poisoned) -> tuple[torch.Tensor, torch.Tensor]:
    """(kernel result, reference result) from the same inputs; the kernel's scratch starts as NaN."""
    expected = case["y"].clone()
    add_lora_reference(expected, *(case[key] for key in ("x", "a", "b", "slots", "scales")))
    with poisoned():
        launch(case)
    return case["y"], expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows,k,n,rank,num_slots", SHAPES)
def test_bgmv_matches_the_reference(dtype, num_rows, k, n, rank, num_slots, device, poisoned, check_close):
    case = make_lora(num_rows, k, n, rank, num_slots, dtype, seed=num_rows * 3 + rank, device=device)
    before = case["y"].clone()
    actual, expected = run_both(case, lambda c: add_lora_bgmv(**c), poisoned)
    check_close(actual, expected)
    untouched = case["slots"] < 0
    assert torch.equal(actual[untouched], before[untouched])


def segment_case(num_rows: int, k: int, n: int, rank: int, num_slots: int, dtype: torch.dtype, device: str) -> dict:
    """Prefill-like runs: lengths across the 16-row tile (1, 15, 16, 17, ...), an empty segment, -1 runs."""
    case = make_lora(num_rows, k, n, rank, num_slots, dtype, seed=num_rows + n, device=device)
    lengths = []
    for length in (17, 0, 1, 15, 3):
        if sum(lengths) + length <= num_rows:
            lengths.append(length)
    lengths.append(num_rows - sum(lengths))
    seg_slots = torch.tensor([(g % (num_slots + 1)) - 1 for g in range(len(lengths))][::-1])  # ends with -1
    seg_slots[lengths.index(1)] = num_slots - 1  # the 1-row segment has an adapter, so T=1 updates its row
    seg_starts = torch.tensor([0, *lengths]).cumsum(0)
    case["slots"] = torch.repeat_interleave(seg_slots, torch.tensor(lengths)).to(device)
    return dict(case, seg_starts=seg_starts.to(device), seg_slots=seg_slots.to(device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows,k,n,rank,num_slots", SHAPES)
def test_sgmv_matches_the_reference(dtype, num_rows, k, n, rank, num_slots, device, poisoned, check_close):
    case = segment_case(num_rows, k, n, rank, num_slots, dtype, device)
    seg_starts, seg_slots = case.pop("seg_starts"), case.pop("seg_slots")
    segments = case["y"].clone()
    add_lora_segments_reference(segments, case["x"], case["a"], case["b"], seg_starts, seg_slots, case["scales"])

    def launch(c: dict) -> None:
        add_lora_sgmv(c["y"], c["x"], c["a"], c["b"], seg_starts.to(torch.int32), seg_slots, c["scales"])
    actual, expected = run_both(case, launch, poisoned)
    torch.testing.assert_close(segments, expected, atol=1e-5, rtol=1e-5)
    check_close(actual, expected)


def test_sgmv_one_row_segments_past_one_lookup_block(device, poisoned, check_close, monkeypatch):
    # 37 segments of one row each (a decode batch sent through SGMV), scanned 16 at a time.
    monkeypatch.setattr(lora, "SGMV_MAX_BLOCK_G", 16)
    case = make_lora(37, 40, 24, 8, 4, torch.float32, seed=9, device=device)
    seg_starts = torch.arange(38, device=device)

    def launch(c: dict) -> None:
        add_lora_sgmv(c["y"], c["x"], c["a"], c["b"], seg_starts, c["slots"], c["scales"])
    check_close(*run_both(case, launch, poisoned))


def test_launchers_refuse_bad_inputs(device):
    case = segment_case(20, 16, 24, 8, 2, torch.float32, device)
    seg_starts, seg_slots = case.pop("seg_starts"), case.pop("seg_slots")
    y, x, a, b, slots, scales = (case[key] for key in ("y", "x", "a", "b", "slots", "scales"))
    with pytest.raises(ValueError, match="do not fit"):
        add_lora_bgmv(y, x[:, :8], a, b, slots, scales)
    with pytest.raises(ValueError, match="contiguous float32"):
        add_lora_bgmv(y, x, a.transpose(1, 2).contiguous().transpose(1, 2), b, slots, scales)
    with pytest.raises(ValueError, match="slots must be a contiguous 1-D int64 or int32"):
        add_lora_bgmv(y, x, a, b, slots.float(), scales)
    with pytest.raises(ValueError, match=r"slots must be \(20,\)"):
        add_lora_bgmv(y, x, a, b, slots[:3], scales)
    with pytest.raises(ValueError, match="rows must be contiguous"):
        add_lora_bgmv(y.t().contiguous().t(), x, a, b, slots, scales)
    with pytest.raises(ValueError, match=r"seg_starts must be \(G\+1,\) and seg_slots \(G,\)"):
        add_lora_sgmv(y, x, a, b, seg_starts, seg_slots[:-1], scales)
    with pytest.raises(ValueError, match="seg_starts must be a contiguous"):
        add_lora_sgmv(y, x, a, b, seg_starts.double(), seg_slots, scales)


def test_slot_offsets_past_int32(device, poisoned, check_close):
    """b (S, N, R) with S * N * R past 2**31 elements (8.6 GB, mapped lazily: only the slots used
    are touched, as in a), int32 slots and segment bounds: slot * stride_b_slot must be int64 math."""
    k, n, rank = 24, 600, 16
    num_slots = 2**31 // (n * rank) + 3
    try:
        a = torch.empty(num_slots, rank, k, device=device)
        b = torch.empty(num_slots, n, rank, device=device)
    except (RuntimeError, MemoryError) as exc:
        pytest.skip(f"cannot map a {num_slots * n * rank * 4 / 2**30:.1f} GiB b: {exc}")
    g = torch.Generator().manual_seed(7)
    scales = torch.rand(num_slots, generator=g).to(device) + 0.5
    used = [num_slots - 1, 3, num_slots - 2]
    assert used[0] * b.stride(0) >= 2**31, "test must address past 2**31 elements"
    for slot in used:
        a[slot] = torch.randn(rank, k, generator=g).to(device) / k ** 0.5
        b[slot] = torch.randn(n, rank, generator=g).to(device) / rank ** 0.5
    slots = torch.tensor([used[0], -1, used[1], used[2]], dtype=torch.int32, device=device)
    y = torch.randn(4, n, generator=g).to(device).bfloat16()
    x = torch.randn(4, k, generator=g).to(device).bfloat16()
    expected = y.clone()
    add_lora_reference(expected, x, a, b, slots, scales)
    actual = y.clone()
    with poisoned():
        add_lora_bgmv(actual, x, a, b, slots, scales)
    check_close(actual, expected)
    seg_starts = torch.arange(5, dtype=torch.int32, device=device)
    actual = y.clone()
    with poisoned():
        add_lora_sgmv(actual, x, a, b, seg_starts, slots, scales)
    check_close(actual, expected)
    del a, b
