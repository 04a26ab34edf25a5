"""A decoder stack's decode step in one native call (decode_layers.c).

`DecoderStack` holds the ctypes description of every layer (norm weights, the four quantized
linears in the quant_gemm layouts, the layer's KV cache), built once; `run` takes the step's
tensors. The reference is the engine's torch path for the same model (engine/models/llama.py),
which tests compare against.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from livecast.kernels.native.build import library

_I, _F, _P = ctypes.c_int, ctypes.c_float, ctypes.c_void_p


class _Linear(ctypes.Structure):
    _fields_ = [("bits", _I), ("n", _I), ("k", _I), ("g", _I), ("w", _P), ("scales", _P), ("mins", _P)]


class _Layer(ctypes.Structure):
    _fields_ = [("input_norm", _P), ("post_norm", _P), ("qkv", _Linear), ("o", _Linear), ("gate_up", _Linear),
                ("down", _Linear), ("k_cache", _P), ("v_cache", _P)]


class _Model(ctypes.Structure):
    _fields_ = [("hidden", _I), ("heads", _I), ("kv_heads", _I), ("head_dim", _I), ("intermediate", _I),
                ("num_blocks", _I), ("block_size", _I), ("max_positions", _I), ("eps", _F), ("scale", _F),
                ("cos_sin", _P)]


class _Step(ctypes.Structure):
    _fields_ = [("num_tokens", _I), ("table_stride", _I), ("positions", _P), ("slots", _P), ("tables", _P),
                ("context_lens", _P)]


@dataclass(frozen=True, slots=True)
class QuantLinear:
    """One linear in a quant_gemm layout: bits 4 (`w` packed, `scales`, `mins`) or 8 (`w` codes,
    `scales`), computing (rows, k) -> (rows, n)."""
    bits: int
    n: int
    k: int
    group_size: int
    w: torch.Tensor
    scales: torch.Tensor
    mins: torch.Tensor | None = None

    def struct(self) -> _Linear:
        return _Linear(self.bits, self.n, self.k, self.group_size, self.w.data_ptr(), self.scales.data_ptr(),
                       self.mins.data_ptr() if self.mins is not None else None)


@dataclass(frozen=True, slots=True)
class LayerWeights:
    input_norm: torch.Tensor  # (hidden,) float32
    post_norm: torch.Tensor
    qkv: QuantLinear  # hidden -> (heads + 2 kv_heads) * head_dim, q | k | v
    o: QuantLinear
    gate_up: QuantLinear  # hidden -> 2 intermediate, gate | up
    down: QuantLinear


class DecoderStack:
    def __init__(self, *, hidden: int, heads: int, kv_heads: int, head_dim: int, intermediate: int,
                 eps: float, scale: float, cos_sin: torch.Tensor, layers: list[LayerWeights]) -> None:
        if head_dim % 8 or heads % kv_heads or cos_sin.dtype != torch.float32 or not cos_sin.is_contiguous():
            raise ValueError("the native stack needs head_dim % 8 == 0, whole GQA groups and a float32 cos|sin table")
        for i, layer in enumerate(layers):
            q_size, kv_size = heads * head_dim, kv_heads * head_dim
            want = {"qkv": (q_size + 2 * kv_size, hidden), "o": (hidden, q_size),
                    "gate_up": (2 * intermediate, hidden), "down": (hidden, intermediate)}
            for name, shape in want.items():
                linear = getattr(layer, name)
                if (linear.n, linear.k) != shape or linear.bits not in (4, 8):
                    raise ValueError(f"layer {i} {name}: {linear.bits}-bit {linear.n}x{linear.k}, expected {shape}")
            for norm in (layer.input_norm, layer.post_norm):
                if norm.dtype != torch.float32 or norm.shape != (hidden,) or not norm.is_contiguous():
                    raise ValueError(f"layer {i}: norm weights must be float32 ({hidden},)")
        self.hidden, self.layers, self.cos_sin = hidden, layers, cos_sin  # keeps the tensors alive
        if cos_sin.shape[1] != head_dim:
            raise ValueError(f"cos|sin table {tuple(cos_sin.shape)} does not match head_dim {head_dim}")
        self._model = _Model(hidden, heads, kv_heads, head_dim, intermediate, 0, 0, cos_sin.shape[0], eps, scale,
                             cos_sin.data_ptr())
        self._structs = (_Layer * len(layers))(*[
            _Layer(l.input_norm.data_ptr(), l.post_norm.data_ptr(), l.qkv.struct(), l.o.struct(), l.gate_up.struct(),
                   l.down.struct(), None, None) for l in layers])
        self._caches_key: tuple | None = None
        self._fn = library().lc_decode_layers

    def _bind_caches(self, kv_caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        key = tuple(c.data_ptr() for pair in kv_caches for c in pair)
        if key == self._caches_key:
            return
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"{len(kv_caches)} KV caches for {len(self.layers)} layers")
        for struct, (k_cache, v_cache) in zip(self._structs, kv_caches):
            for cache in (k_cache, v_cache):
                if cache.dtype != torch.float32 or not cache.permute(2, 0, 1, 3).is_contiguous():
                    raise ValueError("the native stack needs float32 head-major KV caches")
            struct.k_cache, struct.v_cache = k_cache.data_ptr(), v_cache.data_ptr()
        num_blocks, block_size = kv_caches[0][0].shape[:2]
        self._model.num_blocks, self._model.block_size = num_blocks, block_size
        self._caches_key = key

    def run(self, hidden: torch.Tensor, kv_caches, positions: torch.Tensor, slot_mapping: torch.Tensor,
            block_tables: torch.Tensor, context_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (T, hidden) float32 embeddings, token t a decode of sequence t (row t of the
        tables) -> (last MLP output, residual stream), both (T, hidden)."""
        num_tokens = hidden.shape[0]
        if hidden.dtype != torch.float32 or hidden.shape != (num_tokens, self.hidden):
            raise ValueError(f"hidden must be float32 (tokens, {self.hidden}), got {hidden.dtype} {tuple(hidden.shape)}")
        self._bind_caches(kv_caches)
        hidden = hidden.contiguous().clone()  # computed in place
        residual = torch.empty_like(hidden)
        positions, slots = positions.long().contiguous(), slot_mapping.long().contiguous()
        if (block_tables.dtype != torch.int32 or context_lens.dtype != torch.int32 or block_tables.stride(1) != 1
                or block_tables.shape[0] != num_tokens or context_lens.shape != (num_tokens,)):
            raise ValueError("block_tables (tokens, max_blocks) and context_lens (tokens,) must be int32")
        lens = context_lens.contiguous()  # every tensor the step points at stays referenced until the call returns
        step = _Step(num_tokens, block_tables.stride(0), positions.data_ptr(), slots.data_ptr(),
                     block_tables.data_ptr(), lens.data_ptr())
        status = self._fn(ctypes.addressof(self._model), ctypes.addressof(self._structs), len(self.layers),
                          ctypes.addressof(step), hidden.data_ptr(), residual.data_ptr(), 0, torch.get_num_threads())
        if status:
            raise {-2: MemoryError("native decode stack: out of memory"),
                   -3: IndexError("native decode stack: a position, slot or block id outside the model's tables")
                   }.get(status, ValueError("native decode stack: a shape its kernels do not take"))
        return hidden, residual
