"""LoRA adapters as files: what diffusers' `load_lora_weights(path)` reads, checked against the
model at load, and tiny random adapters written in that format (tests, the bench).

The key layouts (see livecast.streamdiff.lora for how adapters are applied):
- diffusers/PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight` (the `unet.` prefix optional),
  with the scale alpha / r from a `<module>.alpha` tensor, else the `lora_adapter_metadata` JSON
  that `save_lora_weights` writes (`lora_alpha`, `alpha_pattern`, `use_rslora`), else alpha = r
  (scale 1, diffusers' rule when a file has no alphas);
- older diffusers: `<module>.lora.down.weight` / `lora.up.weight`, `lora_linear_layer.down/up`
  and attention processors' `<attn>.processor.to_q_lora.down.weight` (`to_out_lora` is
  `to_out.0`);
- kohya (sd-scripts): `lora_unet_<module with _>.lora_down.weight` / `lora_up.weight` / `alpha`.
Text-encoder layers (`text_encoder.<module>`, kohya `lora_te_`) are read too; layers for a second
text encoder (SDXL) are refused. A malformed file raises LoraError naming the adapter, the file
and the module.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY

# Prefixes of the models a LoRA file may hold layers for; only the UNet's are applied.
_COMPONENTS = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2"}
COMPONENT_NAMES = {"unet": "UNet", "text_encoder": "text encoder"}
# (suffix, role) for every low-rank key layout; role is down (A), up (B) or alpha.
_SUFFIXES = ((".lora_A.weight", "down"), (".lora_B.weight", "up"),
             (".lora.down.weight", "down"), (".lora.up.weight", "up"),
             (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
             (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"))
_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")


class LoraError(ValueError):
    """A LoRA file that cannot be applied to this UNet; the message names the adapter and file."""


@dataclass(frozen=True, slots=True)
class LoraLayer:
    """One low-rank update of one UNet module: delta = scale * up @ down."""

    down: torch.Tensor  # A: (r, in) for Linear, (r, in, kh, kw) for Conv2d
    up: torch.Tensor  # B: (out, r) for Linear, (out, r, 1, 1) for Conv2d
    scale: float  # alpha / r (alpha / sqrt(r) for rsLoRA)

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass(frozen=True, slots=True)
class LoraAdapter:
    """A validated adapter: module name -> its layer (tensors in the pipeline's dtype), for the
    UNet (`layers`) and the text encoder (`text_layers`, often empty)."""

    name: str
    path: str
    layers: dict[str, LoraLayer]
    text_layers: dict[str, LoraLayer] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.text_layers is None:
            object.__setattr__(self, "text_layers", {})

    def component(self, name: str) -> dict[str, LoraLayer]:
        return self.layers if name == "unet" else self.text_layers

    @property
    def rank(self) -> int:
        return max(layer.rank for layer in self.layers.values())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layers in (self.layers, self.text_layers)
                   for layer in layers.values() for t in (layer.down, layer.up))


# -- reading and validating files ------------------------------------------------------------

def lora_file(path: str | os.PathLike) -> str:
    """The weights file `path` names: the file itself, or a folder's pytorch_lora_weights.safetensors."""
    path = os.fspath(path)
    if os.path.isdir(path):
        inner = os.path.join(path, WEIGHT_NAME)
        if not os.path.isfile(inner):
            raise FileNotFoundError(f"{path} has no {WEIGHT_NAME}")
        return inner
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such LoRA file: {path}")
    return path


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and the diffusers adapter metadata ({} when absent) of a LoRA file."""
    from safetensors import safe_open

    file = lora_file(path)
    if not file.endswith(".safetensors"):
        raise ValueError(f"{file}: LoRA files are read as .safetensors (no pickle)")
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except OSError:
        raise
    except Exception as exc:  # safetensors' own error type for a malformed file
        raise ValueError(f"{file} is not a readable .safetensors file ({exc})") from None
    raw = metadata.get(METADATA_KEY)
    try:
        return state, (json.loads(raw) if raw else {})
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: its {METADATA_KEY} is not JSON ({exc})") from None


def load_adapter(name: str, path: str | os.PathLike, unet: torch.nn.Module, *,
                 dtype: torch.dtype, device: torch.device,
                 text_encoder: torch.nn.Module | None = None) -> LoraAdapter:
    """Read `path` and check every layer against `unet` (and `text_encoder`): LoraError naming
    the adapter on any malformed layer (a missing A or B, ranks that disagree, shapes that do not
    fit the module, a module the model does not have, layers of another model). Touches nothing
    of the models."""
    where = f"LoRA {name!r} ({os.fspath(path)})"
    try:
        state, metadata = read_lora(path)
    except (OSError, ValueError) as exc:
        raise LoraError(f"{where}: {exc}") from None
    try:
        models = {"unet": unet, "text_encoder": text_encoder}
        groups = _group_keys(state, {c: _kohya_names(m) for c, m in models.items() if m is not None})
        found: dict[str, dict[str, LoraLayer]] = {"unet": {}, "text_encoder": {}}
        for component, modules_groups in groups.items():
            model = models.get(component)
            if model is None:
                raise LoraError(f"has {sum(len(g) for g in modules_groups.values())} tensor(s) for "
                                f"{component}, which this pipeline does not have")
            config = _component_config(metadata, component)
            modules = dict(model.named_modules())
            for module_name, tensors in sorted(modules_groups.items()):
                try:
                    found[component][module_name] = _check_layer(module_name, tensors, modules, config,
                                                                  dtype, device)
                except LoraError as exc:
                    raise LoraError(f"{COMPONENT_NAMES[component]} {exc}") from None
    except LoraError as exc:
        raise LoraError(f"{where}: {exc}") from None
    if not found["unet"] and not found["text_encoder"]:
        raise LoraError(f"{where}: no LoRA layers in the file")
    return LoraAdapter(name, os.fspath(path), found["unet"], found["text_encoder"])


def _kohya_names(unet: torch.nn.Module) -> dict[str, str]:
    return {name.replace(".", "_"): name for name, _ in unet.named_modules() if name}


def _group_keys(state: dict[str, torch.Tensor],
                kohya: dict[str, dict[str, str]]) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """{component: {module name: {"down", "up", "alpha"}}} from any supported key layout."""
    groups: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    others: Counter = Counter()
    for key, tensor in state.items():
        processor = _PROCESSOR.match(key)
        if processor:  # attention processors: <attn>.processor.to_q_lora.down -> <attn>.to_q
            stem = processor[1] + "." + ("to_out.0" if processor[2] == "to_out" else processor[2])
            role = processor[3]
        else:
            for suffix, role in _SUFFIXES:
                if key.endswith(suffix):
                    stem = key[: -len(suffix)]
                    break
            else:
                if "lora_magnitude_vector" in key:
                    raise LoraError(f"{key}: DoRA adapters are not supported")
                if key.endswith(".bias"):
                    raise LoraError(f"{key}: LoRA biases (lora_bias) are not supported")
                raise LoraError(f"{key}: not a LoRA key this loader knows (lora_A/lora_B, lora.down/"
                                f"lora.up, lora_down/lora_up, alpha)")
        component, module = _split_component(stem, kohya)
        if component not in ("unet", "text_encoder"):
            others[component] += 1
            continue
        slot = groups.setdefault(component, {}).setdefault(module, {})
        if role in slot:
            raise LoraError(f"{module}: two tensors for its {role} weight (mixed key layouts?)")
        slot[role] = tensor
    if others:
        raise LoraError(f"has {sum(others.values())} tensor(s) for {', '.join(sorted(others))}: "
                        f"only the UNet's and the (first) text encoder's layers are supported")
    return groups


def _split_component(stem: str, kohya: dict[str, dict[str, str]]) -> tuple[str, str]:
    for prefix, component in (("lora_unet_", "unet"), ("lora_te1_", "text_encoder"),
                              ("lora_te2_", "text_encoder_2"), ("lora_te_", "text_encoder")):
        if stem.startswith(prefix):  # kohya: lora_unet_<module path with '_'>
            flat = stem[len(prefix):]
            if component not in kohya:
                return component, flat  # refused or reported by the caller
            if flat not in kohya[component]:
                raise LoraError(f"{stem}: the {COMPONENT_NAMES[component]} has no module {flat!r} "
                                f"(kohya name)")
            return component, kohya[component][flat]
    first, _, rest = stem.partition(".")
    if first in _COMPONENTS and rest:
        return _COMPONENTS[first], rest
    return "unet", stem  # the oldest diffusers files have no prefix


def _component_config(metadata: dict, component: str) -> dict:
    prefix = component + "."
    scoped = {k[len(prefix):]: v for k, v in metadata.items() if k.startswith(prefix)}
    if scoped.get("use_dora"):
        raise LoraError("DoRA adapters (use_dora) are not supported")
    return scoped


def _pattern_value(patterns: dict, module: str):
    # PEFT's rule for rank_pattern / alpha_pattern keys.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def _check_layer(module_name: str, tensors: dict[str, torch.Tensor], modules: dict,
                 config: dict, dtype: torch.dtype, device: torch.device) -> LoraLayer:
    for role, label in (("down", "lora_A (down)"), ("up", "lora_B (up)")):
        if role not in tensors:
            raise LoraError(f"{module_name}: missing tensor {label}")
    module = modules.get(module_name)
    if module is None:
        raise LoraError(f"{module_name}: no such module")
    down, up = tensors["down"], tensors["up"]
    rank = down.shape[0] if down.dim() else 0
    if isinstance(module, torch.nn.Linear):
        want_down, want_up = (rank, module.in_features), (module.out_features, rank)
        if up.dim() == 4 and up.shape[2:] == (1, 1):
            up = up[:, :, 0, 0]
        if down.dim() == 4 and down.shape[2:] == (1, 1):
            down = down[:, :, 0, 0]
    elif isinstance(module, torch.nn.Conv2d):
        if module.groups != 1:
            raise LoraError(f"{module_name}: grouped convolutions take no LoRA")
        want_down = (rank, module.in_channels, *module.kernel_size)
        want_up = (module.out_channels, rank, 1, 1)
        if down.dim() == 2 and module.kernel_size == (1, 1):
            down = down[:, :, None, None]
        if up.dim() == 2:
            up = up[:, :, None, None]
    else:
        raise LoraError(f"{module_name}: a {type(module).__name__} takes no LoRA (only Linear and Conv2d)")
    if rank < 1 or tuple(down.shape) != want_down:
        raise LoraError(f"{module_name}: lora_A (down) has shape {tuple(down.shape)}, this module "
                        f"needs {want_down} (rank r first)")
    if tuple(up.shape) != want_up:
        raise LoraError(f"{module_name}: lora_B (up) has shape {tuple(up.shape)}, this module needs "
                        f"{want_up} for the rank {rank} of lora_A")
    if "alpha" in tensors:
        alpha = float(tensors["alpha"].float().reshape(-1)[0])
    else:  # PEFT's rule: alpha_pattern, else lora_alpha; diffusers' without metadata: alpha = r
        alpha = _pattern_value(config.get("alpha_pattern"), module_name)
        alpha = float(alpha if alpha is not None else config.get("lora_alpha", rank))
    scale = alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
    for label, t in (("lora_A", down), ("lora_B", up)):
        if not torch.isfinite(t).all():
            raise LoraError(f"{module_name}: {label} holds NaN or infinite values")
    return LoraLayer(down.to(device=device, dtype=dtype).contiguous(),
                     up.to(device=device, dtype=dtype).contiguous(), scale)



ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def save_random_adapter(unet: torch.nn.Module, folder: str | os.PathLike, *, seed: int, rank: int = 8,
                        alpha: float | None = None, std: float = 0.05,
                        targets: Sequence[str] = ATTENTION_TARGETS) -> str:
    """Write a random LoRA for `unet`'s `targets` (attention projections by default) in the
    diffusers/PEFT layout with its adapter metadata, as `save_lora_weights` would; returns the
    folder. For benchmarks and demos (no adapters ship offline); B is non-zero, unlike a fresh
    PEFT init, so the adapter changes the picture."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear) or not any(name.endswith("." + t) for t in targets):
            continue
        down = torch.randn(rank, module.in_features, generator=generator) / module.in_features ** 0.5
        up = torch.randn(module.out_features, rank, generator=generator) * std
        state[f"unet.{name}.lora_A.weight"] = down.contiguous()
        state[f"unet.{name}.lora_B.weight"] = up.contiguous()
    if not state:
        raise ValueError(f"the UNet has no Linear layers named {list(targets)}")
    os.makedirs(folder, exist_ok=True)
    metadata = {"unet.r": rank, "unet.lora_alpha": alpha or rank, "unet.target_modules": list(targets)}
    save_file(state, os.path.join(folder, WEIGHT_NAME),
              metadata={"format": "pt", METADATA_KEY: json.dumps(metadata)})
    return os.fspath(folder)
