"""LLM LoRA adapters as PEFT saves them: a folder with `adapter_config.json` and
`adapter_model.safetensors`, checked against the base model when it is loaded.

Keys look like `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` (A: (r, in)) and
`....lora_B.weight` (B: (out, r)). The update of a module is `scale * B @ A` with scale
`lora_alpha / r` (`/ sqrt(r)` for rsLoRA); `rank_pattern` and `alpha_pattern` override r and
alpha per module as PEFT reads them. What the engine cannot apply is refused, naming the adapter,
the file and the module: DoRA, biases, `modules_to_save`, pickled weights, targets other than the
seven decoder projections, a rank above `max_lora_rank`, shapes that do not match the base.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field

import torch

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+?)\.lora_([AB])(?:\.\w+)?\.weight$")
_uids = itertools.count(1)


class LoraError(ValueError):
    """An adapter that cannot be served with this base model; the message names adapter, file and module."""


class LoraNotFound(LoraError):
    """No adapter of that name is loaded."""


@dataclass(frozen=True, slots=True)
class ModuleShapes:
    """(out_features, in_features) of each target projection of the base model, and its layer count."""

    num_layers: int
    shapes: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, hf_config) -> "ModuleShapes":
        hidden, heads = hf_config.hidden_size, hf_config.num_attention_heads
        head_dim = getattr(hf_config, "head_dim", None) or hidden // heads
        q, kv, inter = heads * head_dim, hf_config.num_key_value_heads * head_dim, hf_config.intermediate_size
        return cls(hf_config.num_hidden_layers, {"q_proj": (q, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden),
                                                 "o_proj": (hidden, q), "gate_proj": (inter, hidden),
                                                 "up_proj": (inter, hidden), "down_proj": (hidden, inter)})


@dataclass(eq=False, slots=True)
class LoraAdapter:
    """One loaded adapter, held in host memory in `dtype` (bfloat16 by default, as vLLM keeps
    adapters in the model's dtype): per (layer, target) the pair (A, B). `scale` is alpha / r
    when every module shares it (the slot applies it in float32); with per-module alphas or ranks
    each B carries its own scale and `scale` is 1. `uid` is unique per load (a reload is a new
    adapter to the prefix cache)."""

    name: str
    path: str
    rank: int  # the largest rank of its modules
    targets: tuple[str, ...]
    modules: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    scale: float = 1.0
    uid: int = field(default_factory=lambda: next(_uids))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.modules.values())


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rule: the first pattern key that matches the module's full name, or the default."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def read_config(name: str, folder: str) -> dict:
    path = os.path.join(folder, CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise LoraError(f"adapter {name!r}: {path} does not exist (a PEFT adapter folder has "
                        f"{CONFIG_NAME} and {WEIGHTS_NAME})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraError(f"adapter {name!r}: cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise LoraError(f"adapter {name!r}: {path} is not a JSON object")
    problems = [(config.get("peft_type", "LORA") != "LORA", f"peft_type {config.get('peft_type')!r} is not LORA"),
                (bool(config.get("use_dora")), "DoRA (use_dora) is not supported"),
                (config.get("bias", "none") != "none", f"bias {config.get('bias')!r} is not supported (only 'none')"),
                (bool(config.get("modules_to_save")), f"modules_to_save {config.get('modules_to_save')} is not supported"),
                (bool(config.get("fan_in_fan_out")), "fan_in_fan_out is not supported")]
    for bad, why in problems:
        if bad:
            raise LoraError(f"adapter {name!r}: {path}: {why}")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise LoraError(f"adapter {name!r}: {path}: r must be a positive integer, got {r!r}")
    return config


def load_adapter(name: str, folder: str, shapes: ModuleShapes, max_rank: int,
                 dtype: torch.dtype = torch.bfloat16) -> LoraAdapter:
    """Read and check a PEFT folder; nothing outside it changes (callers register the result)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = read_config(name, folder)
    file = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(file):
        extra = " (pickled adapter_model.bin is not loaded: convert it to safetensors)" \
            if os.path.isfile(os.path.join(folder, "adapter_model.bin")) else ""
        raise LoraError(f"adapter {name!r}: {file} does not exist{extra}")
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoraError(f"adapter {name!r}: cannot read {file}: {exc}") from None
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise LoraError(f"adapter {name!r}: {file}: tensor {key!r} is not a LoRA A/B weight of a decoder "
                            f"projection ({', '.join(TARGETS)}); other targets are not supported")
        layer, _, target, which = int(match[1]), match[2], match[3], match[4]
        if target not in TARGETS:
            raise LoraError(f"adapter {name!r}: {file}: module {target!r} (layer {layer}) is not a supported "
                            f"target; supported: {', '.join(TARGETS)}")
        if not 0 <= layer < shapes.num_layers:
            raise LoraError(f"adapter {name!r}: {file}: layer {layer} does not exist (the base has "
                            f"{shapes.num_layers} layers)")
        pairs.setdefault((layer, target), {})[which] = tensor
    if not pairs:
        raise LoraError(f"adapter {name!r}: {file} holds no LoRA weights")
    modules, scales, rank = {}, {}, 0
    for (layer, target), ab in sorted(pairs.items()):
        module = f"model.layers.{layer}.{'self_attn' if target[0] in 'qkvo' else 'mlp'}.{target}"
        for which in "AB":
            if which not in ab:
                raise LoraError(f"adapter {name!r}: {file}: {module} has no lora_{which} tensor")
        a, b = ab["A"], ab["B"]
        r = _pattern_value(config.get("rank_pattern"), module, config["r"])
        alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", r))
        out_f, in_f = shapes.shapes[target]
        if a.dim() != 2 or b.dim() != 2 or tuple(a.shape) != (r, in_f) or tuple(b.shape) != (out_f, r):
            raise LoraError(f"adapter {name!r}: {file}: {module} has lora_A {tuple(a.shape)} and lora_B "
                            f"{tuple(b.shape)}; rank {r} for this base needs ({r}, {in_f}) and ({out_f}, {r})")
        if r > max_rank:
            raise LoraError(f"adapter {name!r}: {module} has rank {r}, above this server's max_lora_rank "
                            f"{max_rank} (--max-lora-rank)")
        if not a.is_floating_point() or not b.is_floating_point():
            raise LoraError(f"adapter {name!r}: {file}: {module} weights are {a.dtype}/{b.dtype}, not floating point")
        a, b = a.float().contiguous(), b.float()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise LoraError(f"adapter {name!r}: {file}: {module} has NaN or infinite weights")
        scales[(layer, target)] = alpha / (math.sqrt(r) if config.get("use_rslora") else r)
        modules[(layer, target)] = (a, b)
        rank = max(rank, r)
    uniform = len(set(scales.values())) == 1  # the usual case: one alpha / r for every module
    scale = next(iter(scales.values())) if uniform else 1.0
    modules = {key: (a.to(dtype).contiguous(), (b if uniform else b * scales[key]).to(dtype).contiguous())
               for key, (a, b) in modules.items()}
    targets = tuple(t for t in TARGETS if any(key[1] == t for key in modules))
    return LoraAdapter(name, os.path.abspath(folder), rank, targets, modules, scale)
