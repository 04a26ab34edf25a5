"""Weight-only int4 / int8 GEMMs for x86 CPUs (quant_gemm.c), beside their plain-torch references.

Layouts (what `engine.quant` keeps on a CPU when the native kernels are available), with output
rows interleaved 8 at a time (an "octet"; see quant_gemm.c for the byte order):
- q4: `packed` (N/8, K/32 * 128) uint8, two codes in [0, 15] per byte; `scales`, `mins`
  (N/8, K/g, 8) float16 with `W[n, k] = code * scale + min` per group of g inputs.
- q8: `codes` (N/8, K/32 * 256) int8; `scales` (N/8, K/32, 8) float16 with `W[n, k] = code * scale`
  per block of 32 inputs.
Activations are rounded to int8 per block of 32 inside the kernel (as llama.cpp does), so a
result differs from the reference by that rounding: ~0.5% of the output's scale.

The int8 dots run in one of `GEMM_VARIANTS`, picked when the library loads (the first this CPU
runs, `expected_gemm_variant()`), or named by $LIVECAST_GEMM_VARIANT; all give bit-identical
results, so the choice is speed only.
"""
from __future__ import annotations

import contextlib
import ctypes
from typing import Iterator

import torch

from livecast.kernels.cpu import cpu_flags
from livecast.kernels.native.build import library

_AVX512_VNNI = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
# name -> the /proc/cpuinfo flags it needs, in the library's order of preference; avx512vnni_ymm
# (the avxvnni loops, EVEX-encoded) is never picked, only named, so AVX-512 machines test them.
GEMM_VARIANTS = {"avx512vnni": _AVX512_VNNI, "avxvnni": ("avx_vnni",), "avx512vnni_ymm": _AVX512_VNNI,
                 "avx2": ()}
_NAMED_ONLY = ("avx512vnni_ymm",)

BLOCK = 32
OCTET = 8


def _check_shape(n: int, k: int, group_size: int = BLOCK) -> None:
    if n % OCTET:
        raise ValueError(f"out_features {n} is not a multiple of {OCTET}")
    if group_size % BLOCK or k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of the group size {group_size}, "
                         f"itself a multiple of {BLOCK}")


def _octets(t: torch.Tensor) -> torch.Tensor:
    """(N, G) per-row group values -> (N/8, G, 8)."""
    return t.reshape(t.shape[0] // OCTET, OCTET, t.shape[1]).transpose(1, 2).contiguous()


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0] * OCTET, t.shape[1])


def pack_q4(codes: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """codes (N, K) uint8 in [0, 15], scales and mins (N, K/g) -> the kernel's q4 layout."""
    n, k = codes.shape
    groups = scales.shape[1]
    if not groups or k % groups or tuple(mins.shape) != tuple(scales.shape) or scales.shape[0] != n:
        raise ValueError(f"scales {tuple(scales.shape)} / mins {tuple(mins.shape)} do not fit codes ({n}, {k})")
    _check_shape(n, k, k // groups)
    c = codes.reshape(n // OCTET, OCTET, k // BLOCK, 2, 4, 4).permute(0, 2, 4, 1, 3, 5)  # (o, b, c, i, half, e)
    packed = c[..., 0, :] | (c[..., 1, :] << 4)
    return packed.reshape(n // OCTET, -1).contiguous(), _octets(scales.half()), _octets(mins.half())


def unpack_q4(packed: torch.Tensor) -> torch.Tensor:
    """The kernel's q4 bytes -> codes (N, K)."""
    octets, size = packed.shape
    blocks = size // 128
    b = packed.reshape(octets, blocks, 4, OCTET, 1, 4)
    c = torch.cat([b & 0xF, b >> 4], 4)  # (o, b, c, i, half, e)
    return c.permute(0, 3, 1, 4, 2, 5).reshape(octets * OCTET, blocks * BLOCK)


def quantize_q8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block of 32 inputs (ggml's Q8_0) in the kernel's q8 layout. A Q8_0
    tensor's own dequantized values come back with their own codes and scales."""
    n, k = weight.shape
    _check_shape(n, k)
    w = weight.detach().float().reshape(n, k // BLOCK, BLOCK)
    scales = (w.abs().amax(-1) / 127).half()
    inv = torch.where(scales > 0, 1 / scales.float(), torch.zeros(()))
    codes = torch.round(w * inv[..., None]).clamp(-127, 127).to(torch.int8)
    c = codes.reshape(n // OCTET, OCTET, k // BLOCK, 8, 4).permute(0, 2, 3, 1, 4)  # (o, b, c, i, e)
    return c.reshape(n // OCTET, -1).contiguous(), _octets(scales)


def unpack_q8(codes: torch.Tensor) -> torch.Tensor:
    octets, size = codes.shape
    blocks = size // 256
    return codes.reshape(octets, blocks, 8, OCTET, 4).permute(0, 3, 1, 2, 4).reshape(octets * OCTET, blocks * BLOCK)


def dequantize_q4(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int) -> torch.Tensor:
    codes = unpack_q4(packed)
    n, k = codes.shape
    groups = codes.reshape(n, k // group_size, group_size).float()
    return (groups * _rows(scales).float()[..., None] + _rows(mins).float()[..., None]).reshape(n, k)


def dequantize_q8(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    c = unpack_q8(codes)
    n, k = c.shape
    return (c.reshape(n, k // BLOCK, BLOCK).float() * _rows(scales).float()[..., None]).reshape(n, k)


def _check_x(x: torch.Tensor, k: int) -> torch.Tensor:
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"x must be (rows, {k}), got {tuple(x.shape)}")
    if x.dtype != torch.float32 or x.stride(1) != 1:
        x = x.float().contiguous()
    return x


def _run(fn, *args) -> None:
    status = fn(*args)
    if status:
        raise (ValueError("shape not supported by the native kernel") if status == -1 else MemoryError())


def q4_gemm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor,
            group_size: int) -> torch.Tensor:
    """x (M, K) -> (M, N) float32."""
    n, k = packed.shape[0] * OCTET, packed.shape[1] * 2 // OCTET
    x = _check_x(x, k)
    groups = (n // OCTET, k // group_size, OCTET)
    if (packed.dtype != torch.uint8 or scales.dtype != torch.float16 or mins.dtype != torch.float16
            or tuple(scales.shape) != groups or tuple(mins.shape) != groups or group_size % BLOCK or k % group_size):
        raise ValueError(f"q4 layout mismatch: packed {tuple(packed.shape)} {packed.dtype}, scales "
                         f"{tuple(scales.shape)} {scales.dtype}, mins {tuple(mins.shape)}, group_size {group_size}")
    out = torch.empty(x.shape[0], n)
    _run(library().lc_q4_gemm, x.data_ptr(), x.stride(0), x.shape[0], k, packed.data_ptr(), scales.data_ptr(),
         mins.data_ptr(), n, group_size, out.data_ptr(), n, torch.get_num_threads())
    return out


def q8_gemm(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """x (M, K) -> (M, N) float32."""
    n, k = codes.shape[0] * OCTET, codes.shape[1] // OCTET
    x = _check_x(x, k)
    if codes.dtype != torch.int8 or scales.dtype != torch.float16 or tuple(scales.shape) != (n // OCTET, k // BLOCK, OCTET):
        raise ValueError(f"q8 layout mismatch: codes {tuple(codes.shape)} {codes.dtype}, scales "
                         f"{tuple(scales.shape)} {scales.dtype}")
    out = torch.empty(x.shape[0], n)
    _run(library().lc_q8_gemm, x.data_ptr(), x.stride(0), x.shape[0], k, codes.data_ptr(), scales.data_ptr(),
         n, out.data_ptr(), n, torch.get_num_threads())
    return out


def runnable_gemm_variants(flags: frozenset[str] | None = None) -> list[str]:
    """The variants a CPU with these flags (default: this one's) runs."""
    flags = cpu_flags() if flags is None else flags
    return [name for name, needs in GEMM_VARIANTS.items() if all(f in flags for f in needs)]


def expected_gemm_variant(flags: frozenset[str] | None = None) -> str:
    """The variant the library picks on a CPU with these flags."""
    return next(name for name in runnable_gemm_variants(flags) if name not in _NAMED_ONLY)


def gemm_variant() -> str:
    """The variant the loaded library's int4/int8 GEMMs (and the fused decode stack) run."""
    return library().lc_gemm_variant().decode()


def set_gemm_variant(name: str, lib: ctypes.CDLL | None = None) -> None:
    """Switch every later GEMM to `name`; a variant this CPU cannot run is refused. Not while a
    GEMM runs on another thread."""
    status = (lib or library()).lc_gemm_set_variant(name.encode())
    if status == -1:
        raise ValueError(f"unknown GEMM variant {name!r}; one of {', '.join(GEMM_VARIANTS)}")
    if status:
        missing = [f for f in GEMM_VARIANTS[name] if f not in cpu_flags()]
        raise RuntimeError(f"GEMM variant {name!r} needs the CPU flags {', '.join(GEMM_VARIANTS[name])}; "
                           f"this CPU lacks {', '.join(missing) or 'them (the OS does not enable them)'}")


@contextlib.contextmanager
def gemm_variant_override(name: str) -> Iterator[None]:
    """Run the block with the `name` variant, then restore the one before."""
    before = gemm_variant()
    set_gemm_variant(name)
    try:
        yield
    finally:
        set_gemm_variant(before)
