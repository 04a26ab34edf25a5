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


def rotary_tables(positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, signed sin), each (num_tokens, 1, head_dim), built once per step for every layer.

    `signed sin` is (-sin | sin), so `rotate_half(x) * sin == roll(x, head_dim / 2) * signed_sin`
    exactly: the rotation becomes a roll and two products, with no split, negation or concat.
    """
    cos, sin = cos_sin_cache[positions].to(dtype).chunk(2, dim=-1)  # (num_tokens, head_dim / 2)
    return torch.cat([cos, cos], dim=-1)[:, None, :], torch.cat([-sin, sin], dim=-1)[:, None, :]


def apply_rotary(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (num_tokens, num_heads, head_dim): q and k heads side by side rotate in one pass."""
    cos, signed_sin = tables
    # no addcmul: a fused multiply-add would round differently from HF's q * cos + rotate_half(q) * sin
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin
