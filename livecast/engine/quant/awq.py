"""Activation-aware weight quantization (AWQ, Lin et al. 2023) of a Hugging Face Llama model.

Layer by layer, on calibration activations: (1) per input channel, scale weights up by
`s = x_mean^α / w_mean^(1-α)` (α on a grid, plus s = 1) where that lowers the error of the block's
output after int4 rounding, folding `1/s` into the op before (RMSNorm weight or the previous
linear's rows) so the float model is unchanged; (2) per (output channel, group), search how far to
clip the weights before rounding; (3) round to asymmetric int4 with zero points. Mirrors AutoAWQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from livecast.engine.quant.int4 import QuantizedWeight, check_int4_shape, fake_quantize, quantize_rtn

NO_CLIP = ("q_proj", "k_proj")  # AutoAWQ leaves q/k unclipped: attention logits are clip-sensitive


@dataclass(slots=True)
class AWQConfig:
    group_size: int = 128
    bits: int = 4
    num_grid: int = 20
    max_shrink: float = 0.5  # clip search tries max |w| * (1 - i / num_grid) down to this fraction
    clip_tokens: int = 512  # calibration tokens the clip search looks at
    clip_rows: int = 256  # output channels per clip-search chunk (bounds memory)

    def __post_init__(self) -> None:
        if self.bits != 4:
            raise ValueError(f"only 4-bit AWQ is supported, got bits={self.bits}")
        if self.num_grid < 2:
            raise ValueError(f"num_grid must be >= 2, got {self.num_grid}")
        if not 0 <= self.max_shrink < 1:
            raise ValueError(f"max_shrink must be in [0, 1), got {self.max_shrink}")


class _Captured(Exception):
    pass


def _first_layer_inputs(model: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Hidden states and keyword arguments (rotary embeddings, mask) that layer 0 receives."""
    seen = {}

    def hook(module, args, kwargs):
        seen["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        seen["kwargs"] = kwargs
        raise _Captured

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids, use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    kwargs = {k: v for k, v in seen["kwargs"].items() if k not in ("hidden_states", "past_key_values", "use_cache")}
    return seen["hidden"], kwargs


def _run(module: nn.Module, *args, **kwargs) -> torch.Tensor:
    out = module(*args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _linear_inputs(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> dict[str, torch.Tensor]:
    inputs, handles = {}, []
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: inputs.__setitem__(name, args[0].detach())))
    try:
        _run(layer, hidden, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return inputs


def _search_scales(x: torch.Tensor, linears: list[nn.Linear], block, config: AWQConfig) -> torch.Tensor:
    """Per-input-channel scales for `linears` (which all read `x`) minimizing `block`'s output error."""
    k = x.shape[-1]
    x_mean = x.abs().reshape(-1, k).mean(0)
    w = torch.cat([lin.weight for lin in linears]).abs().view(-1, config.group_size)
    w_mean = (w / w.amax(1, keepdim=True).clamp(min=1e-8)).view(-1, k).mean(0)
    originals = [lin.weight.data.clone() for lin in linears]
    reference = block(x)
    best_error, best = float("inf"), torch.ones_like(x_mean)
    candidates = [None] + [i / config.num_grid for i in range(config.num_grid)]
    for ratio in candidates:
        if ratio is None:
            scales = torch.ones_like(x_mean)  # plain RTN: AWQ then never does worse than it here
        else:
            scales = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp(min=1e-4)
            scales = scales / (scales.max() * scales.min()).sqrt()
        for lin, weight in zip(linears, originals):
            lin.weight.data = fake_quantize(weight * scales, config.group_size) / scales
        error = (block(x) - reference).float().pow(2).mean().item()
        if error < best_error:
            best_error, best = error, scales.clone()
    for lin, weight in zip(linears, originals):
        lin.weight.data = weight
    return best


def _fold(prev: nn.Module, linears: list[nn.Linear], scales: torch.Tensor) -> None:
    """`prev`'s output ÷ s, the linears' input columns × s: the float function is unchanged."""
    with torch.no_grad():
        if isinstance(prev, nn.Linear):
            prev.weight.div_(scales[:, None])
            if prev.bias is not None:
                prev.bias.div_(scales)
        else:  # RMSNorm: its per-channel weight
            prev.weight.div_(scales)
        for lin in linears:
            lin.weight.mul_(scales[None, :])


@torch.no_grad()
def _search_clip(weight: torch.Tensor, x: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """Per (output channel, group) max |w| minimizing the group-wise output error: (N, K / g)."""
    n, k = weight.shape
    g, num_groups = config.group_size, k // config.group_size
    x = x.reshape(-1, k)
    x = x[torch.linspace(0, x.shape[0] - 1, min(config.clip_tokens, x.shape[0])).long()]
    xg = x.view(-1, num_groups, g).transpose(0, 1)  # (groups, tokens, g)
    best = []
    for rows in weight.split(config.clip_rows):
        wg = rows.view(-1, num_groups, g).transpose(0, 1)  # (groups, rows, g)
        reference = xg @ wg.transpose(1, 2)  # (groups, tokens, rows)
        org_max = wg.abs().amax(-1)  # (groups, rows)
        best_err = torch.full_like(org_max, float("inf"))
        best_max = org_max.clone()
        for i in range(int(config.max_shrink * config.num_grid)):
            max_val = org_max * (1 - i / config.num_grid)
            q = fake_quantize(rows, g, max_val.t().contiguous()).view(-1, num_groups, g).transpose(0, 1)
            err = (xg @ q.transpose(1, 2) - reference).pow(2).mean(1)  # (groups, rows)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, max_val, best_max)
        best.append(best_max.t())
    return torch.cat(best)


@torch.no_grad()
def quantize_model(model: nn.Module, input_ids: torch.Tensor, config: AWQConfig,
                   progress: bool = True) -> dict[str, QuantizedWeight]:
    """AWQ every decoder linear of a float HF Llama `model` in place (scales folded in); returns
    `{"model.layers.i.self_attn.q_proj": QuantizedWeight, ...}` (HF module names)."""
    from tqdm import tqdm

    layers = model.model.layers
    for name, module in layers[0].named_modules():
        if isinstance(module, nn.Linear):
            check_int4_shape(module.out_features, module.in_features, config.group_size, f"layers.0.{name}")
    hidden, kwargs = _first_layer_inputs(model, input_ids)
    attn_kwargs = {k: v for k, v in kwargs.items() if k in ("position_embeddings", "attention_mask", "position_ids")}
    quantized = {}
    for index, layer in enumerate(tqdm(layers, desc="AWQ", unit="layer", disable=not progress)):
        attn, mlp = layer.self_attn, layer.mlp
        inputs = _linear_inputs(layer, hidden, kwargs)
        groups = [(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], "self_attn.q_proj",
                   lambda x: _run(attn, hidden_states=x, **attn_kwargs)),
                  (layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], "mlp.gate_proj", mlp),
                  (mlp.up_proj, [mlp.down_proj], "mlp.down_proj", mlp.down_proj)]
        if attn.v_proj.weight.shape == attn.o_proj.weight.shape:  # without GQA, v's rows feed o directly
            groups.insert(1, (attn.v_proj, [attn.o_proj], "self_attn.o_proj", attn.o_proj))
        for prev, linears, source, block in groups:
            _fold(prev, linears, _search_scales(inputs[source], linears, block, config))
            inputs = _linear_inputs(layer, hidden, kwargs)  # later groups see the scaled activations
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                clip = None if name.rsplit(".", 1)[-1] in NO_CLIP else _search_clip(module.weight, inputs[name], config)
                quantized[f"model.layers.{index}.{name}"] = quantize_rtn(module.weight, config.group_size, clip)
        hidden = _run(layer, hidden, **kwargs)  # the next layer calibrates on the float (scaled) outputs
    return quantized
