"""The AutoAWQ "GEMM" checkpoint layout, read and written (what vLLM and transformers load).

Per quantized linear `P` (in_features K, out_features N, group g):
`P.qweight` int32 (K, N/8), `P.qzeros` int32 (K/g, N/8), `P.scales` fp16 (K/g, N), and
`w[n, k] = (q[k, n] - z[k/g, n]) * s[k/g, n]`. Eight 4-bit values share an int32, nibble i holding
column `8c + ORDER[i]` (AutoAWQ's `WQLinear_GEMM.from_linear`; vLLM's `AWQ_REVERSE_ORDER` undoes
it). config.json carries `quantization_config = {quant_method: awq, bits: 4, group_size,
zero_point: true, version: gemm}`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable, Iterator

import torch

from livecast.engine.quant.int4 import QuantizedWeight

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
SUFFIXES = ("qweight", "qzeros", "scales")
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int32)


def pack(values: torch.Tensor) -> torch.Tensor:
    """(rows, cols) ints in [0, 15] → (rows, cols / 8) int32 in AutoAWQ's interleaved order."""
    rows, cols = values.shape
    grouped = values.to(torch.int32).view(rows, cols // 8, 8)[..., list(ORDER)]
    return (grouped << _SHIFTS).sum(-1, dtype=torch.int32)  # disjoint nibbles: sum == bitwise or


def unpack(packed: torch.Tensor) -> torch.Tensor:
    rows, cols = packed.shape
    nibbles = (packed[..., None] >> _SHIFTS) & 0xF  # (rows, cols, 8), nibble i = column ORDER[i]
    out = torch.empty_like(nibbles)
    out[..., list(ORDER)] = nibbles
    return out.view(rows, cols * 8)


def to_awq(weight: QuantizedWeight) -> dict[str, torch.Tensor]:
    """Refuses weights whose zero points are not integers in [0, 15] (e.g. GGUF Q4_1 mins)."""
    zeros = -weight.mins / weight.scales
    if not torch.allclose(zeros, zeros.round(), atol=1e-3) or zeros.min() < -1e-3 or zeros.max() > 15 + 1e-3:
        raise ValueError("AWQ GEMM needs integer zero points in [0, 15]; this weight has fractional minimums")
    return {"qweight": pack(weight.codes.t()), "qzeros": pack(zeros.round().t()),
            "scales": weight.scales.t().to(torch.float16).contiguous()}


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, group_size: int,
             name: str) -> QuantizedWeight:
    """Validate shapes and dtypes against each other, naming the module on any mismatch."""
    if qweight.dtype != torch.int32 or qzeros.dtype != torch.int32:
        raise ValueError(f"{name}.qweight/.qzeros must be int32, got {qweight.dtype}/{qzeros.dtype}")
    in_features, out_features = qweight.shape[0], qweight.shape[1] * 8
    groups = in_features // group_size
    expected = {"qzeros": (groups, out_features // 8), "scales": (groups, out_features)}
    for suffix, tensor in (("qzeros", qzeros), ("scales", scales)):
        if in_features % group_size or tuple(tensor.shape) != expected[suffix]:
            raise ValueError(f"{name}.{suffix}: shape {tuple(tensor.shape)} does not match qweight "
                             f"{tuple(qweight.shape)} with group_size {group_size} (expected {expected[suffix]})")
    scales = scales.float()
    if not torch.isfinite(scales).all():
        raise ValueError(f"{name}.scales: contains NaN/inf")
    codes = unpack(qweight).t().contiguous().to(torch.uint8)  # (N, K)
    scales_nk = scales.t().contiguous()
    return QuantizedWeight(codes, scales_nk, -unpack(qzeros).t().float() * scales_nk, group_size)


def read_config(path: Path) -> dict | None:
    """The folder's AWQ quantization_config, None for an unquantized folder; raises if unsupported."""
    config_file = path / "config.json"
    if not config_file.exists():
        return None
    qcfg = json.loads(config_file.read_text()).get("quantization_config")
    if not qcfg:
        return None
    method = qcfg.get("quant_method")
    if method != "awq":
        raise ValueError(f"{config_file}: quantization_config.quant_method {method!r} is not supported (only awq)")
    bits, version = qcfg.get("bits", qcfg.get("w_bit")), str(qcfg.get("version", "gemm")).lower()
    group_size = qcfg.get("group_size", qcfg.get("q_group_size"))
    if bits != 4 or version != "gemm" or not qcfg.get("zero_point", True) or not isinstance(group_size, int):
        raise ValueError(f"{config_file}: AWQ bits={bits} version={version} zero_point={qcfg.get('zero_point')} "
                         f"group_size={group_size} is unsupported (4-bit GEMM with zero points only)")
    return {**qcfg, "bits": 4, "group_size": group_size, "version": "gemm"}


def split_weights(weights: Iterable[tuple[str, torch.Tensor]], group_size: int,
                  quantized: dict[str, QuantizedWeight]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass plain tensors through; gather each module's AWQ triple into `quantized[module]` and
    yield its dequantized `module.weight`, so the dense loader sees a complete checkpoint."""
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in weights:
        module, _, suffix = name.rpartition(".")
        if suffix not in SUFFIXES:
            yield name, tensor
            continue
        parts = pending.setdefault(module, {})
        parts[suffix] = tensor
        if len(parts) == 3:
            weight = from_awq(parts["qweight"], parts["qzeros"], parts["scales"], group_size, module)
            quantized[module.removeprefix("model.")] = weight
            del pending[module]
            yield f"{module}.weight", weight.dequantize()
    for module, parts in pending.items():
        missing = [s for s in SUFFIXES if s not in parts]
        raise ValueError(f"{module}: AWQ checkpoint is missing {', '.join(f'{module}.{s}' for s in missing)}")


def save_folder(src: Path, out: Path, state: dict[str, torch.Tensor], quantized: dict[str, QuantizedWeight],
                config: dict) -> None:
    """Write `state` (HF names, fp16) with each `quantized[module]` replacing `module.weight`."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()
               if k.removesuffix(".weight") not in quantized}
    for module, weight in quantized.items():
        tensors.update({f"{module}.{k}": v for k, v in to_awq(weight).items()})
    if config.get("tie_word_embeddings"):
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    group_size = next(iter(quantized.values())).group_size
    config = {**config, "torch_dtype": "float16", "quantization_config": {
        "quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": None}}
    config.pop("dtype", None)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
