"""Batched LoRA: `y[t] += scale[s] * b[s] @ (a[s] @ x[t])` with a per-row adapter slot `s`.

Rows of different adapters, and rows with none (slot -1), share one step: the base GEMM runs once
for all of them and these kernels add each row's low-rank update on top (Punica / S-LoRA). The
Punica split: a shrink kernel gathers `a[s]` per row into `v = a[s] @ x[t]` `(T, R)` fp32, an
expand kernel gathers `b[s]` and adds `scale * b[s] @ v[t]` into y, rounding once into y's dtype.
  BGMV: one gather per row (decode), matrix-vector tiles.
  SGMV: contiguous runs of rows that share a slot (prefill segments), `tl.dot` tiles of BLOCK_M
        rows; a program finds its (segment, tile) from a cumulative tile count, so the grid is
        bounded by `cdiv(T, BLOCK_M) + G` without reading segment lengths on the host.
`a` is `(S, R, K)` and `b` `(S, N, R)` float32, the rank R being the stacked ranks of the slices
(q|k|v) of one projection. The references below group rows per slot and run plain torch matmuls.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ---- plain-torch references ---------------------------------------------------------------

def _add_rows(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows, slot: int,
              scales: torch.Tensor) -> None:
    delta = (x[rows].float() @ a[slot].T) @ b[slot].T  # (rows, R) -> (rows, N), fp32
    y[rows] = (y[rows].float() + scales[slot] * delta).to(y.dtype)


def add_lora_reference(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                       slots: torch.Tensor, scales: torch.Tensor) -> None:
    """In place: y[t] += scales[s] * (b[s] @ (a[s] @ x[t])) for every row t with s = slots[t] >= 0;
    rows with slot -1 untouched.

    y: (T, N) float32/bfloat16/float16; x: (T, K) same dtype as y; a: (S, R, K) float32 contiguous;
    b: (S, N, R) float32 contiguous; slots: (T,) int64 (or int32), values in [-1, S); scales: (S,)
    float32. Accumulates in float32, rounds once into y's dtype.
    """
    check_lora_inputs(y, x, a, b, scales)
    if slots.shape != (y.shape[0],):
        raise ValueError(f"slots must be ({y.shape[0]},), got {tuple(slots.shape)}")
    for slot in torch.unique(slots).tolist():
        if slot >= 0:
            _add_rows(y, x, a, b, (slots == slot).nonzero()[:, 0], slot, scales)


def add_lora_segments_reference(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                                seg_starts: torch.Tensor, seg_slots: torch.Tensor, scales: torch.Tensor) -> None:
    """Same, for contiguous runs of rows: rows seg_starts[g]:seg_starts[g+1] use slot seg_slots[g]
    (-1 = none). seg_starts (G+1,) int64 ascending from 0 to T."""
    check_lora_inputs(y, x, a, b, scales)
    check_segments(seg_starts, seg_slots)
    bounds = seg_starts.tolist()
    if bounds[0] != 0 or bounds[-1] != y.shape[0] or any(lo > hi for lo, hi in zip(bounds, bounds[1:])):
        raise ValueError(f"seg_starts must ascend from 0 to {y.shape[0]}, got {bounds}")
    for g, slot in enumerate(seg_slots.tolist()):
        if slot >= 0:
            _add_rows(y, x, a, b, slice(bounds[g], bounds[g + 1]), slot, scales)


def check_lora_inputs(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                      scales: torch.Tensor) -> None:
    """The checks every path shares; raises ValueError naming the offending argument."""
    if y.dim() != 2 or x.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"y must be (T, N) and x (T, K), got y {tuple(y.shape)}, x {tuple(x.shape)}")
    if y.dtype not in FLOAT_DTYPES or x.dtype != y.dtype:
        raise ValueError(f"y and x must share a float dtype (float32/bfloat16/float16), got {y.dtype}, {x.dtype}")
    if a.dim() != 3 or b.dim() != 3:
        raise ValueError(f"a must be (S, R, K) and b (S, N, R), got a {tuple(a.shape)}, b {tuple(b.shape)}")
    (num_slots, rank, _), n = a.shape, y.shape[1]
    if a.shape[2] != x.shape[1] or b.shape != (num_slots, n, rank):
        raise ValueError(f"a {tuple(a.shape)} / b {tuple(b.shape)} do not fit x {tuple(x.shape)}, y {tuple(y.shape)}: "
                         f"want a (S, R, {x.shape[1]}) and b (S, {n}, R)")
    if a.dtype != torch.float32 or b.dtype != torch.float32 or not a.is_contiguous() or not b.is_contiguous():
        raise ValueError(f"a and b must be contiguous float32, got {a.dtype}, {b.dtype}")
    if scales.shape != (num_slots,) or scales.dtype != torch.float32:
        raise ValueError(f"scales must be float32 ({num_slots},), got {scales.dtype} {tuple(scales.shape)}")
    if not (y.device == x.device == a.device == b.device == scales.device):
        raise ValueError("y, x, a, b and scales must share a device")


def check_segments(seg_starts: torch.Tensor, seg_slots: torch.Tensor) -> None:
    if seg_starts.dim() != 1 or seg_slots.shape != (seg_starts.shape[0] - 1,):
        raise ValueError(f"seg_starts must be (G+1,) and seg_slots (G,), got {tuple(seg_starts.shape)}, "
                         f"{tuple(seg_slots.shape)}")
    if seg_starts.dtype not in (torch.int64, torch.int32) or seg_slots.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"seg_starts and seg_slots must be int64 or int32, got {seg_starts.dtype}, {seg_slots.dtype}")
