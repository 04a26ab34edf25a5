"""The batched LoRA update for x86 CPUs (lora_gemm.c); its reference is
`livecast.kernels.lora.add_lora_reference`, which groups rows per slot and runs torch matmuls.

Each row's update is one fixed reduction order (see lora_gemm.c), so a row's result is the same
bits whatever other rows, and adapters, share the call: the engine's deterministic mode can run
mixed-adapter batches through it.
"""
from __future__ import annotations

import torch

from livecast.kernels.lora import check_lora_inputs
from livecast.kernels.native.build import library

DTYPES = (torch.float32, torch.bfloat16)


def supports(x: torch.Tensor, a: torch.Tensor) -> bool:
    """Whether `add_lora_native` takes these (else callers use `add_lora_reference`)."""
    return (x.device.type == a.device.type == "cpu" and x.dtype in DTYPES and a.dtype in DTYPES
            and library() is not None)


def add_lora_native(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                    slots: torch.Tensor, scales: torch.Tensor) -> None:
    """In place, as `add_lora_reference`: y[t] += scales[s] * (b[s] @ (a[s] @ x[t])) for rows with
    slot s >= 0. y (T, N), x (T, K) float32 or bfloat16 with contiguous rows (any row stride);
    a (S, R, K), b (S, N, R), scales (S,) float32; slots (T,) int64 or int32 in [-1, S). CPU only."""
    check_lora_inputs(y, x, a, b, scales, weight_dtypes=DTYPES)
    if y.dtype not in DTYPES or y.device.type != "cpu":
        raise ValueError(f"the native LoRA kernel takes float32 or bfloat16 CPU tensors, got {y.dtype} on {y.device}")
    if y.stride(1) != 1 or x.stride(1) != 1:
        raise ValueError(f"y and x rows must be contiguous, strides y {y.stride()}, x {x.stride()}")
    if slots.shape != (y.shape[0],) or slots.dtype not in (torch.int64, torch.int32) or slots.device.type != "cpu":
        raise ValueError(f"slots must be int64 or int32 ({y.shape[0]},) on the CPU, got {slots.dtype} "
                         f"{tuple(slots.shape)} on {slots.device}")
    slots = slots.to(torch.int64).contiguous()
    (num_slots, rank, k), (num_rows, n) = a.shape, y.shape
    status = library().lc_add_lora(
        y.data_ptr(), y.stride(0), x.data_ptr(), x.stride(0),
        int(y.dtype == torch.bfloat16) | int(a.dtype == torch.bfloat16) << 1, num_rows, k, n,
        a.data_ptr(), b.data_ptr(), rank, num_slots, slots.data_ptr(), scales.data_ptr(), torch.get_num_threads())
    if status == -2:
        raise MemoryError(f"no memory for the ({num_rows}, {rank}) LoRA intermediate")
    if status:
        raise ValueError(f"slots must lie in [-1, {num_slots}) and a, b, x be non-empty: a {tuple(a.shape)}, "
                         f"slots {slots.tolist() if num_rows <= 16 else '...'}")
