"""Llama-family decoder (Llama 2/3, SmolLM, Mistral, Qwen2) over a paged KV cache.

Wires the layers together and maps HF checkpoint names onto fused projections (q|k|v and
gate|up become one matmul each: fewer, larger GEMMs are what a CPU wants).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from livecast.engine.backend import Backend, default_backend
from livecast.engine.layers.attention import AttentionMetadata, paged_attention
from livecast.engine.layers.norm import RMSNorm
from livecast.engine.layers.rotary import apply_rotary, build_cos_sin_cache, rotary_tables


class LlamaAttention(nn.Module):
    def __init__(self, config, cos_sin_cache: torch.Tensor, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        bias = bool(getattr(config, "attention_bias", False)) or config.model_type == "qwen2"
        self.qkv_proj = nn.Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=bias)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)
        self.scale = self.head_dim ** -0.5
        self.cos_sin_cache = cos_sin_cache

    def project(self, rope, hidden, lora=None, layer: int = 0):
        """q (num_tokens, num_heads, head_dim), k and v (num_tokens, num_kv_heads, head_dim), rotated.

        `rope`: the step's positions (the Triton kernel rotates in place) or, on the torch path,
        the step's `rotary_tables`, with which q and k heads rotate together in one pass."""
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        if lora is not None:
            lora.add(layer, "qkv", qkv, hidden)
        qk_size = self.q_size + self.kv_size
        v = qkv[:, qk_size:].view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.backend.triton:
            from livecast.kernels.rotary import rotary_embedding

            q = qkv[:, :self.q_size].view(num_tokens, self.num_heads, self.head_dim)
            k = qkv[:, self.q_size:qk_size].view(num_tokens, self.num_kv_heads, self.head_dim)
            rotary_embedding(rope, q, k, self.cos_sin_cache)  # in place on views of qkv
            return q, k, v
        qk = apply_rotary(qkv[:, :qk_size].view(num_tokens, self.num_heads + self.num_kv_heads, self.head_dim), rope)
        return qk[:, :self.num_heads], qk[:, self.num_heads:], v


class LlamaMLP(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x, lora=None, layer: int = 0):
        gate_up = self.gate_up_proj(x)
        if lora is None:
            gate, up = gate_up.split(self.intermediate_size, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        lora.add(layer, "gate_up", gate_up, x)
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        hidden = F.silu(gate) * up
        out = self.down_proj(hidden)
        lora.add(layer, "down", out, hidden)
        return out


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, cos_sin_cache, backend: Backend, index: int = 0) -> None:
        super().__init__()
        self.index = index  # the layer's place in the stack: its LoRA weights' index
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend)
        self.self_attn = LlamaAttention(config, cos_sin_cache, backend)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend)
        self.mlp = LlamaMLP(config)

    def pre_attention(self, rope, hidden, residual, lora=None):
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        q, k, v = self.self_attn.project(rope, hidden, lora, self.index)
        return q, k, v, residual

    def post_attention(self, attn_out, residual, lora=None):
        attn_out = attn_out.flatten(1)
        hidden = self.self_attn.o_proj(attn_out)
        if lora is not None:
            lora.add(self.index, "o", hidden, attn_out)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden, lora, self.index), residual

    def forward(self, rope, hidden, residual, kv_cache, meta, lora=None):
        q, k, v, residual = self.pre_attention(rope, hidden, residual, lora)
        out = paged_attention(q, k, v, kv_cache[0], kv_cache[1], meta, self.self_attn.scale)
        return self.post_attention(out, residual, lora)


def _batch_invariant_linears(model: nn.Module) -> None:
    """Every linear on a kernel whose rows do not depend on the batch: dense ones on the native
    dense GEMM; quantized ones on their native kernel at every step size (no dense copy, whose
    float GEMM rounds differently from the kernel's int8 activations)."""
    from livecast.engine.layers.linear import InvariantLinear
    from livecast.engine.quant.linear import QuantizedLinear

    for name, module in list(model.named_modules()):
        if isinstance(module, QuantizedLinear):
            if getattr(module, "kernel", None) != "native":
                raise ValueError(f"{name}: deterministic numerics need the native quantized kernels, "
                                 f"not {getattr(module, 'kernel', type(module).__name__)!r}")
            module.dense_weight, module.dense_min_tokens = None, 1 << 62
        elif type(module) is nn.Linear:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, InvariantLinear(module))


class LlamaForCausalLM(nn.Module):
    def __init__(self, config, max_positions: int, backend: Backend | None = None) -> None:
        super().__init__()
        self.config = config
        self.backend = backend = backend or default_backend()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        cos_sin = build_cos_sin_cache(config, head_dim, max_positions)
        self.cos_sin_cache = cos_sin  # plain attribute: .to(dtype) must not round it
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, cos_sin, backend, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, backend)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.native_decode = None  # engine.models.llama_native.NativeDecode, built by prepare()

    def _apply(self, fn, *args, **kwargs):
        # follow the weights' device but keep the rotary table fp32, shared by all layers
        super()._apply(fn, *args, **kwargs)
        cache = self.cos_sin_cache.to(device=self.embed_tokens.weight.device)
        self.cos_sin_cache = cache
        for layer in self.layers:
            layer.self_attn.cos_sin_cache = cache
        return self

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]], meta: AttentionMetadata,
                lora=None) -> torch.Tensor:
        """`lora`: the step's engine.lora.LoraBatch when some row runs an adapter (the per-layer
        path then adds each row's low-rank update after every adapted projection)."""
        hidden = self.embed_tokens(input_ids)  # (num_tokens, hidden_size)
        fused = None if lora is not None else self.native_decode
        # deterministic: every token, prefill or decode, a decode row of the stack. Otherwise decode
        # steps below the dense crossover, and every step of decodes and verifications (token
        # tables built; a few rows per sequence, spec_max_batch sequences at most): a verified
        # token is computed as its decode would have been, whatever the crossover measured
        deterministic = self.backend.deterministic
        decodes = not meta.prefill_chunks and fused is not None and input_ids.shape[0] < fused.max_tokens
        if fused is not None and (deterministic or decodes or meta.token_block_tables is not None):
            tables, lens = ((meta.token_block_tables, meta.token_context_lens) if meta.token_block_tables is not None
                            else (meta.decode_block_tables, meta.decode_context_lens))
            hidden, residual = fused.stack.run(hidden, kv_caches, positions, meta.slot_mapping, tables, lens)
            hidden, _ = self.norm(hidden, residual)
            return hidden
        # the rotary tables are the same for every layer: gathered once per step
        rope = positions if self.backend.triton else rotary_tables(positions, self.cos_sin_cache, hidden.dtype)
        residual = None
        for layer, kv_cache in zip(self.layers, kv_caches):
            hidden, residual = layer.forward(rope, hidden, residual, kv_cache, meta, lora)  # no hooks: one call less per layer
        hidden, _ = self.norm(hidden, residual)
        return hidden

    def prepare(self) -> str:
        """Once the weights are final (loaded, quantized, on their device and dtype): build the
        native fused decode step where the backend runs one. Returns the decode step taken."""
        from livecast.engine.models.llama_native import native_decode

        self.native_decode = None
        if not self.backend.native:
            return f"{self.backend.kind} decode step"
        if self.backend.deterministic:
            _batch_invariant_linears(self)
        self.native_decode, step = native_decode(self)
        if self.backend.deterministic and self.native_decode is not None:
            return "native fused step for every token, prefill and decode (deterministic)"
        return step

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors in, fusing q/k/v and gate/up. Missing tensors raise."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        fused = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
                 "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
        for name, tensor in weights:
            name = name.removeprefix("model.")
            if "rotary_emb" in name:
                continue
            target, shard = name, None
            for part, (fused_name, index) in fused.items():
                if f".{part}." in name:
                    target, shard = name.replace(part, fused_name), index
                    break
            if target not in params:
                continue
            param = params[target]
            with torch.no_grad():
                if shard is None:
                    param.copy_(tensor)
                else:
                    param.narrow(0, *self._shard_range(target, shard)).copy_(tensor)
            loaded.add(f"{target}:{shard}")
        if self.tie_word_embeddings or "lm_head.weight:None" not in loaded:
            self.lm_head.weight = self.embed_tokens.weight
            loaded.add("lm_head.weight:None")
        expected = {f"{n}:None" for n in params if "qkv_proj.weight" not in n and "gate_up_proj" not in n
                    and "qkv_proj.bias" not in n}
        missing = sorted(n for n in expected if n not in loaded)
        if missing:
            raise ValueError(f"checkpoint is missing tensors: {missing[:5]}{' …' if len(missing) > 5 else ''}")

    def _shard_range(self, target: str, shard: int) -> tuple[int, int]:
        attn = self.layers[0].self_attn
        if "qkv_proj" in target:
            sizes = [attn.q_size, attn.kv_size, attn.kv_size]
        else:
            sizes = [self.layers[0].mlp.intermediate_size] * 2
        return sum(sizes[:shard]), sizes[shard]
