"""The Llama decoder stack as one native call per decode step (kernels.native.decode_layers).

Taken when every linear of every layer runs a native quantized kernel (int4 or int8 on an x86
CPU with the native kernels), activations and KV cache are float32, and the step is all decodes
smaller than the dense crossover (`QuantizedLinear.dense_min_tokens`). Prefill chunks, larger
steps and every other configuration take the torch path, which computes the same model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from livecast.engine.quant.int4 import Int4Linear
from livecast.engine.quant.int8 import Int8Linear
from livecast.kernels import native
from livecast.kernels.native.decode_layers import DecoderStack, LayerWeights, QuantLinear

LINEARS = (("qkv", "self_attn.qkv_proj"), ("o", "self_attn.o_proj"), ("gate_up", "mlp.gate_up_proj"),
           ("down", "mlp.down_proj"))


@dataclass(slots=True)
class NativeDecode:
    stack: DecoderStack
    max_tokens: int  # steps of fewer tokens take the native stack


def _quant_linear(module: nn.Module, name: str) -> QuantLinear:
    if getattr(module, "kernel", None) != "native" or module.bias is not None:
        raise ValueError(f"{name} is not a native quantized linear without bias ({type(module).__name__})")
    if isinstance(module, Int4Linear):
        return QuantLinear(4, module.out_features, module.in_features, module.group_size, module.packed,
                           module.scales, module.mins)
    if isinstance(module, Int8Linear):
        return QuantLinear(8, module.out_features, module.in_features, 32, module.codes, module.scales)
    raise ValueError(f"{name}: {type(module).__name__} has no native layout")


def native_decode(model: nn.Module) -> tuple[NativeDecode | None, str]:
    """(the stack, "native fused decode step"), or (None, why not)."""
    if model.backend.triton:
        return None, "torch/triton decode step (Triton attention)"
    if not native.available():
        return None, f"torch decode step (native kernels unavailable: {native.unavailable()})"
    config = model.config
    if getattr(config, "hidden_act", "silu") != "silu" or model.embed_tokens.weight.dtype != torch.float32:
        return None, "torch decode step (the native stack takes float32 SiLU models)"
    try:
        layers = []
        for i, layer in enumerate(model.layers):
            linears = {key: _quant_linear(layer.get_submodule(path), f"layers.{i}.{path}") for key, path in LINEARS}
            layers.append(LayerWeights(layer.input_layernorm.weight.detach(), layer.post_attention_layernorm.weight.detach(),
                                       **linears))
        attn = model.layers[0].self_attn
        stack = DecoderStack(hidden=config.hidden_size, heads=attn.num_heads, kv_heads=attn.num_kv_heads,
                             head_dim=attn.head_dim, intermediate=model.layers[0].mlp.intermediate_size,
                             eps=model.layers[0].input_layernorm.eps, scale=attn.scale,
                             cos_sin=model.cos_sin_cache.float().contiguous(), layers=layers)
    except ValueError as exc:
        return None, f"torch decode step ({exc})"
    modules = [layer.get_submodule(path) for layer in model.layers for _, path in LINEARS]
    max_tokens = min(m.dense_min_tokens if m.dense_weight is not None else 1 << 62 for m in modules)
    limit = "" if max_tokens >= 1 << 62 else f" below {max_tokens} tokens"
    return NativeDecode(stack, max_tokens), f"native fused decode step{limit}"
