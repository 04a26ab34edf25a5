"""Rotary position embedding (NeoX / HF-Llama rotate-half layout) from a cos|sin cache."""
from __future__ import annotations

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


def build_cos_sin_cache(config, head_dim: int, max_positions: int, device=None) -> torch.Tensor:
    """(max_positions, head_dim) fp32: first half cos, second half sin (vLLM's layout).

    Frequencies come from transformers' own rope initialisers, so every rope_type a supported
    checkpoint names (default, linear, dynamic, llama3, yarn …) matches HF exactly.
    """
    with torch.device("cpu"):  # real numbers even when the model is being built on "meta"
        cache = _cos_sin(config, head_dim, max_positions)
    return cache.to(device)


def _cos_sin(config, head_dim: int, max_positions: int) -> torch.Tensor:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        base = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, device="cpu")
    t = torch.arange(max_positions, dtype=torch.int64, device="cpu").float()
    freqs = torch.outer(t, inv_freq.float().cpu())
    return torch.cat([freqs.cos() * scaling, freqs.sin() * scaling], dim=-1)


def apply_rotary(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (num_tokens, num_heads, head_dim), k (num_tokens, num_kv_heads, head_dim)."""
    cos, sin = cos_sin_cache[positions].to(q.dtype).chunk(2, dim=-1)  # (num_tokens, head_dim / 2)
    cos = torch.cat([cos, cos], dim=-1)[:, None, :]
    sin = torch.cat([sin, sin], dim=-1)[:, None, :]
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
