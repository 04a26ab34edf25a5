"""Group-wise asymmetric int4 weights and the linear that runs them.

One canonical form, `QuantizedWeight` (`w = code * scale + min` per group of input channels),
covers every source: RTN and AWQ (integer zero points, `min = -zero * scale`), GGUF Q4_1 (`d`,
`m`) and Q4_0 (`min = -8 d`). `Int4Linear` re-lays it out once for the device: the native AVX2
kernel's interleaved rows (`kernels.native.quant_gemm`, fp16 scales and mins), else PyTorch's
packed CPU int4 matmul (`_weight_int4pack_mm_for_cpu`, which wants `(code - 8) * scale + zero`, so
`zero = min + 8 scale`), or nibble-packed rows for the Triton kernel on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from livecast.engine.quant.linear import QuantizedLinear
from livecast.kernels import native
from livecast.kernels.native import quant_gemm

GROUP_SIZES = (32, 64, 128, 256)
PACK_ROWS = 16  # the packed CPU layout tiles 16 output rows at a time
OP_DTYPE = torch.bfloat16  # the CPU int4 op is fast only with bf16 activations (fp32: ~10x slower)


def check_int4_shape(out_features: int, in_features: int, group_size: int, name: str = "weight") -> None:
    """Raise ValueError naming the tensor when the packed int4 matmul cannot take this shape."""
    if group_size not in GROUP_SIZES:
        raise ValueError(f"{name}: group_size {group_size} is not one of {GROUP_SIZES}")
    if in_features % group_size:
        raise ValueError(f"{name}: in_features {in_features} is not a multiple of group_size {group_size}")
    if out_features % PACK_ROWS:
        raise ValueError(f"{name}: out_features {out_features} is not a multiple of {PACK_ROWS} "
                         "(the packed int4 layout tiles 16 output rows)")


@dataclass(slots=True)
class QuantizedWeight:
    """`w[n, k] = codes[n, k] * scales[n, k // group_size] + mins[n, k // group_size]`."""
    codes: torch.Tensor  # (out_features, in_features) uint8 in [0, 15]
    scales: torch.Tensor  # (out_features, in_features // group_size) float32
    mins: torch.Tensor  # (out_features, in_features // group_size) float32
    group_size: int

    def __post_init__(self) -> None:
        n, k = self.codes.shape
        if self.codes.dtype != torch.uint8:
            raise ValueError(f"codes must be uint8, got {self.codes.dtype}")
        if k % self.group_size:
            raise ValueError(f"in_features {k} is not a multiple of group_size {self.group_size}")
        groups = (n, k // self.group_size)
        if tuple(self.scales.shape) != groups or tuple(self.mins.shape) != groups:
            raise ValueError(f"scales {tuple(self.scales.shape)} / mins {tuple(self.mins.shape)} must be {groups}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        n, k = self.codes.shape
        groups = self.codes.view(n, k // self.group_size, self.group_size).float()
        w = groups * self.scales.float()[..., None] + self.mins.float()[..., None]
        return w.view(n, k).to(dtype)

    def select_rows(self, index: torch.Tensor) -> "QuantizedWeight":
        return QuantizedWeight(self.codes[index], self.scales[index], self.mins[index], self.group_size)

    @staticmethod
    def cat(parts: list["QuantizedWeight"]) -> "QuantizedWeight":
        """Stack along output rows (fusing q|k|v or gate|up); groups run along inputs, so this is exact."""
        sizes = {p.group_size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"cannot fuse int4 weights with different group sizes {sorted(sizes)}")
        return QuantizedWeight(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]),
                               torch.cat([p.mins for p in parts]), parts[0].group_size)


def quantize_rtn(weight: torch.Tensor, group_size: int, max_abs: torch.Tensor | None = None) -> QuantizedWeight:
    """Round-to-nearest asymmetric int4 with integer zero points (AutoAWQ's scheme).

    `max_abs` (out_features, num_groups), from AWQ's clipping search, clamps each group first.
    """
    n, k = weight.shape
    if k % group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {group_size}")
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    if max_abs is not None:
        w = w.clamp(-max_abs[..., None], max_abs[..., None])
    w_max, w_min = w.amax(-1), w.amin(-1)
    scales = ((w_max - w_min).clamp(min=1e-5) / 15).half().float()  # fp16 as stored by AutoAWQ
    zeros = (-torch.round(w_min / scales)).clamp(0, 15)
    codes = (torch.round(w / scales[..., None]) + zeros[..., None]).clamp(0, 15)
    return QuantizedWeight(codes.to(torch.uint8).view(n, k), scales, -zeros * scales, group_size)


def fake_quantize(weight: torch.Tensor, group_size: int, max_abs: torch.Tensor | None = None) -> torch.Tensor:
    return quantize_rtn(weight, group_size, max_abs).dequantize(weight.dtype)


class Int4Linear(QuantizedLinear):
    """`y = x @ dequant(W).T + b` from packed int4 weights, without materializing W per call."""

    def __init__(self, weight: QuantizedWeight, bias: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", name: str = "weight", kernel: str | None = None) -> None:
        """`kernel`: native | aten on a CPU (default: native where it builds), triton on CUDA."""
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.group_size = weight.group_size
        check_int4_shape(self.out_features, self.in_features, self.group_size, name)
        self.device_type = torch.device(device).type
        codes = weight.codes.to(device)
        self.kernel = kernel or ("triton" if self.device_type != "cpu" else "native" if native.available() else "aten")
        if self.kernel not in (("native", "aten") if self.device_type == "cpu" else ("triton",)):
            raise ValueError(f"{name}: no {self.kernel!r} int4 kernel on {self.device_type}")
        if self.kernel == "native":
            for buffer, tensor in zip(("packed", "scales", "mins"), quant_gemm.pack_q4(codes, weight.scales, weight.mins)):
                self.register_buffer(buffer, tensor)
        elif self.kernel == "aten":
            self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1))
            zeros = weight.mins + 8 * weight.scales
            scale_zeros = torch.stack([weight.scales, zeros], -1).transpose(0, 1)  # (groups, N, 2)
            self.register_buffer("scale_zeros", scale_zeros.contiguous().to(device, OP_DTYPE))
        else:
            self.register_buffer("packed", codes[:, 0::2] | (codes[:, 1::2] << 4))  # (N, K // 2)
            self.register_buffer("scales", weight.scales.to(device, OP_DTYPE))
            self.register_buffer("mins", weight.mins.to(device, OP_DTYPE))
        self.bias = None if bias is None else nn.Parameter(bias.detach().to(device), requires_grad=False)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out_features, in_features) this layer computes with."""
        if self.kernel == "native":
            return quant_gemm.dequantize_q4(self.packed, self.scales, self.mins, self.group_size)
        eye = torch.eye(self.in_features, device=self.packed.device)
        return self.weight_mm(eye).float().t().contiguous()  # rows of I @ W.T are W's columns

    def weight_mm(self, x2: torch.Tensor) -> torch.Tensor:
        if self.kernel == "native":
            return quant_gemm.q4_gemm(x2, self.packed, self.scales, self.mins, self.group_size)
        if self.kernel == "aten":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2.to(self.scale_zeros.dtype), self.packed, self.group_size, self.scale_zeros)
        from livecast.kernels.int4_gemm import int4_gemm

        return int4_gemm(x2.to(self.scales.dtype).contiguous(), self.packed, self.scales, self.mins, self.group_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}, kernel={self.kernel}"
