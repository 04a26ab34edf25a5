"""Native GGUF weights: Q4_0 / Q4_1 blocks → int4 `QuantizedWeight`, Q8_0 → dense rows for int8.

ggml blocks run along a row's input channels, 32 values each: Q4_0 `d:f16, qs[16]` with
`w = (q - 8) d`; Q4_1 `d:f16, m:f16, qs[16]` with `w = q d + m`; Q8_0 `d:f16, qs[32]:i8` with
`w = q d`. In `qs`, byte j holds value j in its low nibble and value j + 16 in its high one.
A Q4 block is exactly one int4 group of 32, so it loads without re-rounding. llama.cpp's
converter permutes q/k rows for its rotary layout; `hf_name` and `unpermute_rows` undo that.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from livecast.engine.quant.int4 import QuantizedWeight

BLOCK = 32
BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
_LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
_TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
              "output_norm.weight": "model.norm.weight"}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    match = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if match is None or match.group(2) not in _LAYER_NAMES:
        return None
    return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.{match.group(3)}"


def _blocks(raw: np.ndarray, qtype: str, name: str) -> tuple[torch.Tensor, int]:
    """(num_rows, blocks_per_row, block_bytes) uint8 view of a tensor's raw rows."""
    raw = np.array(raw, copy=True)  # torch wants a writable array; the reader memory-maps the file
    size = BLOCK_BYTES[qtype]
    if raw.dtype != np.uint8 or raw.ndim != 2 or raw.shape[1] % size:
        raise ValueError(f"{name}: {qtype} data must be uint8 rows of whole {size}-byte blocks, "
                         f"got {raw.dtype} {raw.shape}")
    rows = torch.from_numpy(raw)
    return rows.view(rows.shape[0], -1, size), rows.shape[0]


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    return blocks[..., offset:offset + 2].contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)  # values 0..15 then 16..31 of each block


def decode_q4(raw: np.ndarray, qtype: str, name: str = "tensor") -> QuantizedWeight:
    """Q4_0 / Q4_1 rows → a group-32 `QuantizedWeight`, bit-exact (scales kept in float32)."""
    if qtype not in ("Q4_0", "Q4_1"):
        raise ValueError(f"{name}: {qtype} is not a 4-bit type this loader reads (Q4_0, Q4_1)")
    blocks, num_rows = _blocks(raw, qtype, name)
    scales = _f16(blocks, 0)  # (N, groups)
    if qtype == "Q4_0":
        mins, qs = -8 * scales, blocks[..., 2:]
    else:
        mins, qs = _f16(blocks, 2), blocks[..., 4:]
    codes = _nibbles(qs).reshape(num_rows, -1)
    _check_finite(name, scales, mins)
    return QuantizedWeight(codes, scales, mins, BLOCK)


def decode_q8_0(raw: np.ndarray, name: str = "tensor") -> torch.Tensor:
    """Q8_0 rows → float32 (N, K)."""
    blocks, num_rows = _blocks(raw, "Q8_0", name)
    scales = _f16(blocks, 0)
    _check_finite(name, scales)
    codes = blocks[..., 2:].contiguous().view(torch.int8).float()
    return (codes * scales[..., None]).reshape(num_rows, -1)


def dequantize(raw: np.ndarray, qtype: str, name: str = "tensor") -> torch.Tensor:
    if qtype == "Q8_0":
        return decode_q8_0(raw, name)
    return decode_q4(raw, qtype, name).dequantize()


def _check_finite(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: block scales contain NaN/inf (corrupt GGUF tensor)")


def unpermute_rows(num_rows: int, num_heads: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's q/k permutation (HF `reverse_permute` on row indices)."""
    rows = torch.arange(num_rows)
    return rows.view(num_heads, num_rows // num_heads // 2, 2).transpose(1, 2).reshape(num_rows)


def read_gguf(path: Path, num_heads: int, num_kv_heads: int
              ) -> Iterator[tuple[str, QuantizedWeight | torch.Tensor, str]]:
    """(HF name, int4 weight or float32 tensor, GGUF type) for every tensor the model uses.

    Q4_0/Q4_1 come back as `QuantizedWeight`, Q8_0 and float types as float32 tensors; any other
    quantized type raises, naming the tensor.
    """
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"]
    permuted = bytes(arch.parts[arch.data[0]]).decode() == "llama"  # llama.cpp permutes q/k for llama only
    for tensor in reader.tensors:
        name, qtype = hf_name(tensor.name), tensor.tensor_type.name
        if name is None:
            continue
        if qtype in ("Q4_0", "Q4_1"):
            value = decode_q4(tensor.data, qtype, tensor.name)
        elif qtype == "Q8_0":
            value = decode_q8_0(tensor.data, tensor.name)
        elif qtype in ("F32", "F16"):
            value = torch.from_numpy(np.array(tensor.data)).float()  # numpy shape is already (N, K)
        else:
            raise ValueError(f"{tensor.name}: GGUF type {qtype} is not supported natively "
                             "(Q4_0, Q4_1, Q8_0, F16, F32); use --quantization none to dequantize")
        heads = num_heads if ".q_proj." in name else num_kv_heads if ".k_proj." in name else None
        heads = heads if permuted else None
        if heads is not None:
            index = unpermute_rows(value.shape[0], heads)
            value = value.select_rows(index) if isinstance(value, QuantizedWeight) else value[index]
        yield name, value, qtype
