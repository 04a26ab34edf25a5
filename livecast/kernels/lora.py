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
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
REFERENCE_WEIGHT_DTYPES = (torch.float32, torch.bfloat16)  # adapters' A/B (the Triton kernels: float32)


# ---- plain-torch references ---------------------------------------------------------------

def _add_rows(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows, slot: int,
              scales: torch.Tensor) -> None:
    delta = (x[rows].float() @ a[slot].float().T) @ b[slot].float().T  # (rows, R) -> (rows, N), fp32
    y[rows] = (y[rows].float() + scales[slot] * delta).to(y.dtype)


def add_lora_reference(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                       slots: torch.Tensor, scales: torch.Tensor) -> None:
    """In place: y[t] += scales[s] * (b[s] @ (a[s] @ x[t])) for every row t with s = slots[t] >= 0;
    rows with slot -1 untouched.

    y: (T, N) float32/bfloat16/float16; x: (T, K) same dtype as y; a: (S, R, K) float32 or bfloat16 contiguous;
    b: (S, N, R) of a's dtype; slots: (T,) int64 (or int32), values in [-1, S); scales: (S,)
    float32. Accumulates in float32, rounds once into y's dtype.
    """
    check_lora_inputs(y, x, a, b, scales, weight_dtypes=REFERENCE_WEIGHT_DTYPES)
    if slots.shape != (y.shape[0],):
        raise ValueError(f"slots must be ({y.shape[0]},), got {tuple(slots.shape)}")
    for slot in torch.unique(slots).tolist():
        if slot >= 0:
            _add_rows(y, x, a, b, (slots == slot).nonzero()[:, 0], slot, scales)


def add_lora_segments_reference(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                                seg_starts: torch.Tensor, seg_slots: torch.Tensor, scales: torch.Tensor) -> None:
    """Same, for contiguous runs of rows: rows seg_starts[g]:seg_starts[g+1] use slot seg_slots[g]
    (-1 = none). seg_starts (G+1,) int64 ascending from 0 to T."""
    check_lora_inputs(y, x, a, b, scales, weight_dtypes=REFERENCE_WEIGHT_DTYPES)
    check_segments(seg_starts, seg_slots)
    bounds = seg_starts.tolist()
    if bounds[0] != 0 or bounds[-1] != y.shape[0] or any(lo > hi for lo, hi in zip(bounds, bounds[1:])):
        raise ValueError(f"seg_starts must ascend from 0 to {y.shape[0]}, got {bounds}")
    for g, slot in enumerate(seg_slots.tolist()):
        if slot >= 0:
            _add_rows(y, x, a, b, slice(bounds[g], bounds[g + 1]), slot, scales)


def check_lora_inputs(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                      scales: torch.Tensor, weight_dtypes: tuple = (torch.float32,)) -> None:
    """The checks every path shares; raises ValueError naming the offending argument. `a` and `b`
    share one of `weight_dtypes` (the native kernel and the references also take bfloat16)."""
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
    if a.dtype not in weight_dtypes or b.dtype != a.dtype or not a.is_contiguous() or not b.is_contiguous():
        names = "/".join(str(d).removeprefix("torch.") for d in weight_dtypes)
        raise ValueError(f"a and b must be contiguous {names} of one dtype, got {a.dtype}, {b.dtype}")
    if scales.shape != (num_slots,) or scales.dtype != torch.float32 or not scales.is_contiguous():
        raise ValueError(f"scales must be contiguous float32 ({num_slots},), got {scales.dtype} {tuple(scales.shape)} "
                         f"strides {scales.stride()}")
    if not (y.device == x.device == a.device == b.device == scales.device):
        raise ValueError("y, x, a, b and scales must share a device")


def check_segments(seg_starts: torch.Tensor, seg_slots: torch.Tensor) -> None:
    if seg_starts.dim() != 1 or seg_slots.shape != (seg_starts.shape[0] - 1,):
        raise ValueError(f"seg_starts must be (G+1,) and seg_slots (G,), got {tuple(seg_starts.shape)}, "
                         f"{tuple(seg_slots.shape)}")
    if seg_starts.dtype not in (torch.int64, torch.int32) or seg_slots.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"seg_starts and seg_slots must be int64 or int32, got {seg_starts.dtype}, {seg_slots.dtype}")


# ---- Triton kernels -------------------------------------------------------------------------

@triton.jit
def _bgmv_shrink_kernel(
    v_ptr, x_ptr, a_ptr, slots_ptr, k, rank,
    stride_v_row, stride_x_row, stride_a_slot, stride_a_rank,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """v[row, r-block] = a[slot] @ x[row]: matrix-vector tiles, one row per program."""
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < rank
    a_rows = a_ptr + slot * stride_a_slot + offs_r[:, None] * stride_a_rank  # int64: S*R*K may pass 2**31
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k
        xv = tl.load(x_ptr + row * stride_x_row + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        at = tl.load(a_rows + offs_k[None, :], mask=mask_r[:, None] & mask_k[None, :], other=0.0)
        acc += tl.sum(at * xv[None, :], 1)
    tl.store(v_ptr + row * stride_v_row + offs_r, acc, mask=mask_r)


@triton.jit
def _bgmv_expand_kernel(
    y_ptr, v_ptr, b_ptr, slots_ptr, scales_ptr, n, rank,
    stride_y_row, stride_v_row, stride_b_slot, stride_b_n,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """y[row, n-block] += scale * b[slot, n-block] @ v[row], rounded once into y's dtype."""
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    if slot < 0:
        return
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    b_rows = b_ptr + slot * stride_b_slot + offs_n[:, None] * stride_b_n
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < rank
        vv = tl.load(v_ptr + row * stride_v_row + offs_r, mask=mask_r, other=0.0)
        bt = tl.load(b_rows + offs_r[None, :], mask=mask_n[:, None] & mask_r[None, :], other=0.0)
        acc += tl.sum(bt * vv[None, :], 1)
    y_row = y_ptr + row * stride_y_row + offs_n
    y = tl.load(y_row, mask=mask_n, other=0.0).to(tl.float32) + tl.load(scales_ptr + slot) * acc
    tl.store(y_row, y.to(y_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _segment_tile(seg_starts_ptr, seg_slots_ptr, tile_ends_ptr, num_segments, BLOCK_M: tl.constexpr,
                  BLOCK_G: tl.constexpr):
    """This program's (segment, rows, slot): segment g owns programs tile_ends[g-1] <= pid < tile_ends[g].
    Returns slot -1 for programs past the last tile (the grid is an upper bound)."""
    pid = tl.program_id(0)
    seg = tl.full([], 0, tl.int32)
    for g0 in range(0, num_segments, BLOCK_G):
        offs_g = g0 + tl.arange(0, BLOCK_G)
        ends = tl.load(tile_ends_ptr + offs_g, mask=offs_g < num_segments, other=2**31 - 1)
        seg += tl.sum((ends <= pid).to(tl.int32), 0)
    valid = seg < num_segments
    first_tile = tl.load(tile_ends_ptr + seg - 1, mask=valid & (seg > 0), other=0)
    seg_start = tl.load(seg_starts_ptr + seg, mask=valid, other=0).to(tl.int64)
    seg_end = tl.load(seg_starts_ptr + seg + 1, mask=valid, other=0).to(tl.int64)
    slot = tl.load(seg_slots_ptr + seg, mask=valid, other=-1).to(tl.int64)
    rows = seg_start + (pid - first_tile) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) int64
    return rows, rows < seg_end, slot


@triton.jit
def _sgmv_shrink_kernel(
    v_ptr, x_ptr, a_ptr, seg_starts_ptr, seg_slots_ptr, tile_ends_ptr, num_segments, k, rank,
    stride_v_row, stride_x_row, stride_a_slot, stride_a_rank,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """v[rows, r-block] = x[rows] @ a[slot].T for a tile of BLOCK_M rows of one segment."""
    rows, mask_m, slot = _segment_tile(seg_starts_ptr, seg_slots_ptr, tile_ends_ptr, num_segments, BLOCK_M, BLOCK_G)
    if slot < 0:
        return
    offs_r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < rank
    a_cols = a_ptr + slot * stride_a_slot + offs_r[None, :] * stride_a_rank  # a[slot].T as (K, R)
    acc = tl.zeros([BLOCK_M, BLOCK_R], dtype=tl.float32)
    for k0 in range(0, k, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k
        xt = tl.load(x_ptr + rows[:, None] * stride_x_row + offs_k[None, :],
                     mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        at = tl.load(a_cols + offs_k[:, None], mask=mask_k[:, None] & mask_r[None, :], other=0.0)
        acc += tl.dot(xt, at, input_precision=DOT_PRECISION)
    tl.store(v_ptr + rows[:, None] * stride_v_row + offs_r[None, :], acc, mask=mask_m[:, None] & mask_r[None, :])


@triton.jit
def _sgmv_expand_kernel(
    y_ptr, v_ptr, b_ptr, scales_ptr, seg_starts_ptr, seg_slots_ptr, tile_ends_ptr, num_segments, n, rank,
    stride_y_row, stride_v_row, stride_b_slot, stride_b_n,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """y[rows, n-block] += scale * v[rows] @ b[slot, n-block].T, rounded once into y's dtype."""
    rows, mask_m, slot = _segment_tile(seg_starts_ptr, seg_slots_ptr, tile_ends_ptr, num_segments, BLOCK_M, BLOCK_G)
    if slot < 0:
        return
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    b_cols = b_ptr + slot * stride_b_slot + offs_n[None, :] * stride_b_n  # b[slot].T as (R, N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for r0 in range(0, rank, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < rank
        vt = tl.load(v_ptr + rows[:, None] * stride_v_row + offs_r[None, :],
                     mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        bt = tl.load(b_cols + offs_r[:, None], mask=mask_r[:, None] & mask_n[None, :], other=0.0)
        acc += tl.dot(vt, bt, input_precision=DOT_PRECISION)
    mask = mask_m[:, None] & mask_n[None, :]
    y_tile = y_ptr + rows[:, None] * stride_y_row + offs_n[None, :]
    y = tl.load(y_tile, mask=mask, other=0.0).to(tl.float32) + tl.load(scales_ptr + slot) * acc
    tl.store(y_tile, y.to(y_ptr.dtype.element_ty), mask=mask)


def _check_launch(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scales: torch.Tensor,
                  **index: torch.Tensor) -> None:
    check_lora_inputs(y, x, a, b, scales)
    if y.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError(f"y and x rows must be contiguous, strides y {y.stride()}, x {x.stride()}")
    for name, tensor in index.items():
        if tensor.dtype not in (torch.int64, torch.int32) or tensor.dim() != 1 or not tensor.is_contiguous():
            raise ValueError(f"{name} must be a contiguous 1-D int64 or int32 tensor, got {tensor.dtype} "
                             f"{tuple(tensor.shape)} strides {tensor.stride()}")
        if tensor.device != y.device:
            raise ValueError(f"{name} is on {tensor.device}, y on {y.device}")


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 outputs get exact fp32 products; a bf16/fp16 output cannot tell tf32's from them.
    return "ieee" if dtype == torch.float32 or triton.knobs.runtime.interpret else "tf32"


def add_lora_bgmv(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  slots: torch.Tensor, scales: torch.Tensor) -> None:
    """`add_lora_reference` on the device, one gather of a[s] and b[s] per row (decode steps)."""
    _check_launch(y, x, a, b, scales, slots=slots)
    if slots.shape != (y.shape[0],):
        raise ValueError(f"slots must be ({y.shape[0]},), got {tuple(slots.shape)}")
    (num_rows, n), (_, rank, k) = y.shape, a.shape
    if num_rows == 0:
        return
    v = torch.empty(num_rows, rank, dtype=torch.float32, device=y.device)  # (T, R)
    block_r = min(16, triton.next_power_of_2(rank))
    _bgmv_shrink_kernel[(num_rows, triton.cdiv(rank, block_r))](
        v, x, a, slots, k, rank, v.stride(0), x.stride(0), a.stride(0), a.stride(1),
        BLOCK_R=block_r, BLOCK_K=min(256, triton.next_power_of_2(k)))
    block_n = min(64, triton.next_power_of_2(n))
    _bgmv_expand_kernel[(num_rows, triton.cdiv(n, block_n))](
        y, v, b, slots, scales, n, rank, y.stride(0), v.stride(0), b.stride(0), b.stride(1),
        BLOCK_N=block_n, BLOCK_R=min(32, triton.next_power_of_2(rank)))


SGMV_BLOCK_M = 16
SGMV_MAX_BLOCK_G = 256  # segments a program scans per step when it looks up its tile


def add_lora_sgmv(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                  seg_starts: torch.Tensor, seg_slots: torch.Tensor, scales: torch.Tensor) -> None:
    """`add_lora_segments_reference` on the device: `tl.dot` tiles of SGMV_BLOCK_M rows within each
    segment (prefill). Reads nothing back to the host: seg_starts must ascend from 0 to T."""
    _check_launch(y, x, a, b, scales, seg_starts=seg_starts, seg_slots=seg_slots)
    check_segments(seg_starts, seg_slots)
    (num_rows, n), (_, rank, k), num_segments = y.shape, a.shape, seg_slots.shape[0]
    if num_rows == 0 or num_segments == 0:
        return
    block_m = SGMV_BLOCK_M
    # Tiles per segment (none for slot -1), summed: program p serves the segment whose range holds p.
    seg_lens = seg_starts[1:] - seg_starts[:-1]
    tile_ends = torch.cumsum(torch.where(seg_slots >= 0, (seg_lens + block_m - 1) // block_m, 0), 0).to(torch.int32)
    max_tiles = triton.cdiv(num_rows, block_m) + num_segments
    v = torch.empty(num_rows, rank, dtype=torch.float32, device=y.device)  # (T, R)
    segments = (seg_starts, seg_slots, tile_ends, num_segments)
    meta = dict(BLOCK_M=block_m, BLOCK_G=min(SGMV_MAX_BLOCK_G, max(16, triton.next_power_of_2(num_segments))),
                DOT_PRECISION=_dot_precision(y.dtype))
    block_r = 16 if rank <= 16 else 32
    _sgmv_shrink_kernel[(max_tiles, triton.cdiv(rank, block_r))](
        v, x, a, *segments, k, rank, v.stride(0), x.stride(0), a.stride(0), a.stride(1),
        BLOCK_R=block_r, BLOCK_K=min(64, max(16, triton.next_power_of_2(k))), **meta)
    block_n = min(64, max(16, triton.next_power_of_2(n)))
    _sgmv_expand_kernel[(max_tiles, triton.cdiv(n, block_n))](
        y, v, b, scales, *segments, n, rank, y.stride(0), v.stride(0), b.stride(0), b.stride(1),
        BLOCK_N=block_n, BLOCK_R=block_r, **meta)
