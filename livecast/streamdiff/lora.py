"""Style LoRAs per stream: adapters in diffusers' LoRA file format, applied row by row inside one
batched UNet call, so streams with different LoRAs (or none) still share every UNet call.

Files: what diffusers' `load_lora_weights(path)` reads for the UNet, a `.safetensors` state dict
(a folder means its `pytorch_lora_weights.safetensors`) in any of these key layouts:
- diffusers/PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight` (the `unet.` prefix optional),
  with the scale alpha / r from a `<module>.alpha` tensor, else the `lora_adapter_metadata` JSON
  that `save_lora_weights` writes (`lora_alpha`, `alpha_pattern`, `use_rslora`), else alpha = r
  (scale 1, diffusers' rule when a file has no alphas);
- older diffusers: `<module>.lora.down.weight` / `lora.up.weight`, `lora_linear_layer.down/up`
  and attention processors' `<attn>.processor.to_q_lora.down.weight` (`to_out_lora` is
  `to_out.0`);
- kohya (sd-scripts): `lora_unet_<module with _>.lora_down.weight` / `lora_up.weight` / `alpha`.
Text-encoder layers (`text_encoder.<module>`, kohya `lora_te_`) are applied when the stream's
prompts are encoded (StreamPipeline caches those embeddings per adapter and scale); layers for a
second text encoder (SDXL) are refused.

Per row i of a UNet call with adapter a_i and scale s_i, each targeted Linear or Conv2d computes
    y_i = W x_i + s_i * (alpha / r) * B_{a_i} (A_{a_i} x_i)      (rows without a LoRA add nothing)
as a forward hook on the module, so the model's modules are never replaced. Three strategies
(`LoraBank.strategy`, default DEFAULT_STRATEGY):
- `batched`: the A of every adapter in the call are concatenated along the rank, one matmul gives
  every row all adapters' low-rank activations, a per-row mask (scale on the row's own adapter's
  columns, 0 elsewhere) keeps its own, and one matmul with the concatenated B adds them back:
  two plain matmuls per layer, whatever the mix, at a rank that grows with the adapters present;
- `gather`: each row's own A and B are gathered (zeros for rows without a LoRA) and applied with
  two batched matmuls (grouped convolutions for Conv2d): the rank of one adapter, per row;
- `grouped`: rows are gathered per adapter and each group runs its own pair of matmuls
  (index_add back): one pair of matmuls per distinct adapter in the call.
`docs/BENCHMARKS.md` has all three measured on the demo model (`livecast bench lora --video`).

With fused QKV projections (StreamPipeline's default) an adapter's `to_q`/`to_k`/`to_v` layers
land on the fused `to_qkv` (`to_kv` for cross-attention) as slices of its output.
"""
from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
STRATEGIES = ("batched", "gather", "grouped")
DEFAULT_STRATEGY = "gather"  # measured fastest on the demo model: docs/BENCHMARKS.md

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


# -- applying adapters per row ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Rows:
    """Which adapter each row of the current UNet call uses."""

    names: tuple[str, ...]  # adapters present, in first-use order
    index: torch.Tensor  # (N,) long: position in names, -1 for rows without a LoRA
    scale: torch.Tensor  # (N,) the row's lora_scale (0 for rows without a LoRA)
    groups: tuple[torch.Tensor | None, ...]  # per name: its rows (None: every row)
    slot: torch.Tensor  # (N,) long: position in names, len(names) for rows without a LoRA


@dataclass(frozen=True, slots=True)
class _Part:
    layer: LoraLayer
    out: slice  # the module's output channels it updates


class _Target:
    """A hooked module (of the UNet or the text encoder) and the parts of resident adapters that
    update it."""

    def __init__(self, bank: LoraBank, component: str, module: torch.nn.Module):
        self.bank, self.component, self.module = bank, component, module
        self.conv = isinstance(module, torch.nn.Conv2d)
        self.out_features = module.out_channels if self.conv else module.out_features
        self.parts: dict[str, list[_Part]] = {}
        self._packed: OrderedDict[tuple, tuple] = OrderedDict()
        self.handle = module.register_forward_hook(self._hook)

    def add(self, adapter: str, part: _Part) -> None:
        self.parts.setdefault(adapter, []).append(part)
        self._packed.clear()

    def remove(self, adapter: str) -> None:
        if self.parts.pop(adapter, None) is not None:
            self._packed.clear()

    def _hook(self, module, inputs, output):
        rows = self.bank.current.get(self.component)
        if rows is None or not any(name in self.parts for name in rows.names):
            return output
        if self.bank.strategy == "grouped":
            return self._grouped(inputs[0], output, rows)
        if self.bank.strategy == "gather" and len(rows.names) > 1:
            return self._gather(inputs[0], output, rows)
        return self._batched(inputs[0], output, rows)

    # A (R, in[, kh, kw]) and B (out, R[, 1, 1]) of the adapters in `names`, concatenated along
    # the rank; owner[c] = the position in `names` of column c's adapter; col_scale = alpha / r.
    def _pack(self, names: tuple[str, ...]) -> tuple:
        packed = self._packed.get(names)
        if packed is not None:
            self._packed.move_to_end(names)
            return packed
        downs, ups, owner, col_scale = [], [], [], []
        for i, name in enumerate(names):
            for part in self.parts.get(name, ()):
                r = part.layer.rank
                downs.append(part.layer.down)
                up = part.layer.up.new_zeros((self.out_features, *part.layer.up.shape[1:]))
                up[part.out] = part.layer.up
                ups.append(up)
                owner += [i] * r
                col_scale += [part.layer.scale] * r
        device = downs[0].device
        packed = (torch.cat(downs), torch.cat(ups, dim=1),
                  torch.tensor(owner, device=device), torch.tensor(col_scale, device=device))
        self._packed[names] = packed
        while len(self._packed) > 8:
            self._packed.popitem(last=False)
        return packed

    # Per adapter in `names`, then a zero slot for rows without a LoRA: A (S+1, R, in[, kh, kw])
    # and B (S+1, out, R) with alpha / r folded in, each adapter's parts concatenated along the
    # rank and zero-padded to the largest R.
    def _pack_slots(self, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        key = (None, *names)  # None: never an adapter name
        packed = self._packed.get(key)
        if packed is not None:
            self._packed.move_to_end(key)
            return packed
        per = [self.parts.get(name, []) for name in names]
        rank = max(sum(p.layer.rank for p in parts) for parts in per)
        some = next(p for parts in per for p in parts).layer
        down = some.down.new_zeros((len(names) + 1, rank, *some.down.shape[1:]))
        up = some.up.new_zeros((len(names) + 1, self.out_features, rank))
        for i, parts in enumerate(per):
            col = 0
            for part in parts:
                r = part.layer.rank
                down[i, col:col + r] = part.layer.down
                up[i, part.out, col:col + r] = part.layer.up.reshape(part.layer.up.shape[0], r) * part.layer.scale
                col += r
        packed = (down, up)
        self._packed[key] = packed
        while len(self._packed) > 8:
            self._packed.popitem(last=False)
        return packed

    def _gather(self, x, output, rows: _Rows):
        """Each row's own A and B gathered (zeros for rows without a LoRA): two batched matmuls
        (grouped convolutions for Conv2d) over rank R, whatever the number of adapters."""
        down, up = self._pack_slots(rows.names)
        a, b = down.index_select(0, rows.slot), up.index_select(0, rows.slot)
        n, rank = a.shape[0], a.shape[1]
        scale = rows.scale.to(x.dtype)
        if self.conv:
            m = self.module
            h = F.conv2d(x.reshape(1, -1, *x.shape[2:]), a.reshape(n * rank, *a.shape[2:]), None,
                         m.stride, m.padding, m.dilation, groups=n)
            h = h.view(n, rank, *h.shape[2:]) * scale.view(n, 1, 1, 1)
            delta = F.conv2d(h.reshape(1, n * rank, *h.shape[2:]), b.reshape(n * self.out_features, rank, 1, 1),
                             groups=n)
            return output + delta.view(output.shape)
        h = torch.bmm(x.reshape(n, -1, x.shape[-1]), a.transpose(1, 2)) * scale.view(n, 1, 1)
        return output + torch.bmm(h, b.transpose(1, 2)).view(output.shape)

    def _down(self, x, weight):
        m = self.module
        if self.conv:
            return F.conv2d(x, weight, None, m.stride, m.padding, m.dilation)
        return F.linear(x, weight)

    def _up(self, h, weight):
        return F.conv2d(h, weight) if self.conv else F.linear(h, weight)

    def _batched(self, x, output, rows: _Rows):
        down, up, owner, col_scale = self._pack(rows.names)
        # mask[i, c]: row i's scale times alpha / r on its own adapter's columns, else 0
        mask = (rows.index[:, None] == owner[None, :]) * (rows.scale[:, None] * col_scale[None, :])
        h = self._down(x, down)
        shape = (h.shape[0], -1, 1, 1) if self.conv else (h.shape[0], *([1] * (h.dim() - 2)), -1)
        h = h * mask.to(h.dtype).view(shape)
        return output + self._up(h, up)

    def _grouped(self, x, output, rows: _Rows):
        for i, (name, idx) in enumerate(zip(rows.names, rows.groups)):
            if name not in self.parts:
                continue
            down, up, _, col_scale = self._pack((name,))
            xs = x if idx is None else x.index_select(0, idx)
            scale = rows.scale if idx is None else rows.scale.index_select(0, idx)
            h = self._down(xs, down)
            shape = (h.shape[0], -1, 1, 1) if self.conv else (h.shape[0], *([1] * (h.dim() - 2)), -1)
            h = h * (scale[:, None] * col_scale[None, :]).to(h.dtype).view(shape)
            delta = self._up(h, up)
            if idx is None:
                output = output + delta
            else:
                output = output.index_add(0, idx, delta)
        return output


class LoraBank:
    """The adapters streams may pick (registered by name and path) and the resident ones (an
    LRU of at most `max_resident`, hooked into the UNet and text encoder). An adapter that is not
    resident is read again from its file when a call needs it; a call needing more adapters than
    `max_resident` keeps them all for that call.
    """

    def __init__(self, unet: torch.nn.Module, *, dtype: torch.dtype, device: torch.device,
                 max_resident: int = 4, strategy: str = DEFAULT_STRATEGY,
                 text_encoder: torch.nn.Module | None = None):
        if max_resident < 1:
            raise ValueError(f"max_resident must be >= 1, got {max_resident}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        self.unet, self.text_encoder, self.dtype, self.device = unet, text_encoder, dtype, device
        self.models = {"unet": unet, "text_encoder": text_encoder}
        self.max_resident, self.strategy = max_resident, strategy
        self.paths: dict[str, str] = {}
        self.text_adapters: set[str] = set()  # registered adapters with text-encoder layers
        self.resident: OrderedDict[str, LoraAdapter] = OrderedDict()
        self.current: dict[str, _Rows] = {}  # component -> rows, for the duration of one call
        self._targets: dict[tuple[str, str], _Target] = {}  # (component, module name) -> target
        self._lock = threading.RLock()
        self.loads = 0  # adapters read from disk (registration included)

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def register(self, name: str, path: str | os.PathLike) -> LoraAdapter:
        """Validate the file and make `name` pickable; resident while there is room. On any error
        (LoraError, naming the adapter) nothing already registered or resident changes."""
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", name):
            raise LoraError(f"LoRA name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
        adapter = self._load(name, path)
        with self._lock:
            self.loads += 1
            if name in self.resident:
                self._evict(name)
            self.paths[name] = os.fspath(path)
            if adapter.text_layers:
                self.text_adapters.add(name)
            else:
                self.text_adapters.discard(name)
            if len(self.resident) < self.max_resident:
                self._install(adapter)
        return adapter

    def check(self, name: str | None) -> None:
        """ValueError (starting with `lora`) when `name` is not a registered adapter."""
        if name is not None and name not in self.paths:
            known = ", ".join(self.paths) or "none; start the server with --diffusion-loras name=PATH"
            raise ValueError(f"lora {name!r} is not a registered adapter (registered: {known})")

    @contextmanager
    def rows(self, assignment: Sequence[tuple[tuple[str, float] | None, int]],
             component: str = "unet") -> Iterator[None]:
        """For one call of `component` (the UNet, or the text encoder): `assignment` lists, in row
        order, (adapter name and scale, or None) and how many consecutive rows use it."""
        if all(lora is None for lora, _ in assignment):
            yield
            return
        with self._lock:
            self.current[component] = self._plan(assignment)
            try:
                yield
            finally:
                del self.current[component]
                while len(self.resident) > self.max_resident:
                    self._evict(next(iter(self.resident)))

    def _plan(self, assignment) -> _Rows:
        names: list[str] = []
        index, scale = [], []
        for lora, count in assignment:
            if lora is None or lora[1] == 0:
                index += [-1] * count
                scale += [0.0] * count
                continue
            name, value = lora
            if name not in names:
                names.append(name)
            index += [names.index(name)] * count
            scale += [float(value)] * count
        for name in names:
            self._ensure(name)
        index_t = torch.tensor(index, device=self.device)
        groups = tuple(None if all(i == k for i in index) else
                       torch.tensor([r for r, i in enumerate(index) if i == k], device=self.device)
                       for k in range(len(names)))
        slot = torch.where(index_t < 0, len(names), index_t)
        return _Rows(tuple(names), index_t, torch.tensor(scale, device=self.device), groups, slot)

    def _ensure(self, name: str) -> None:
        if name in self.resident:
            self.resident.move_to_end(name)
            return
        self.check(name)
        self.loads += 1
        self._install(self._load(name, self.paths[name]))

    def _load(self, name: str, path: str | os.PathLike) -> LoraAdapter:
        return load_adapter(name, path, self.unet, dtype=self.dtype, device=self.device,
                            text_encoder=self.text_encoder)

    def _install(self, adapter: LoraAdapter) -> None:
        for component in ("unet", "text_encoder"):
            model = self.models[component]
            for module_name, layer in adapter.component(component).items():
                target_name, out = self._executed(model, module_name)
                target = self._targets.get((component, target_name))
                if target is None:
                    target = self._targets[component, target_name] = _Target(
                        self, component, model.get_submodule(target_name))
                target.add(adapter.name, _Part(layer, out))
        self.resident[adapter.name] = adapter

    def _evict(self, name: str) -> None:
        self.resident.pop(name, None)
        for target in self._targets.values():
            target.remove(name)

    @staticmethod
    def _executed(model: torch.nn.Module, module_name: str) -> tuple[str, slice]:
        """The module that runs for `module_name` and the slice of its output that is this one's:
        with fused projections, to_q/to_k/to_v are slices of to_qkv (to_kv for cross-attention)."""
        parent_name, _, leaf = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if leaf in ("to_q", "to_k", "to_v") and getattr(parent, "fused_projections", False):
            order = ("to_k", "to_v") if parent.is_cross_attention else ("to_q", "to_k", "to_v")
            if leaf in order:
                fused = "to_kv" if parent.is_cross_attention else "to_qkv"
                start = sum(getattr(parent, p).out_features for p in order[:order.index(leaf)])
                size = getattr(parent, leaf).out_features
                return f"{parent_name}.{fused}", slice(start, start + size)
        module = model.get_submodule(module_name)
        size = module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features
        return module_name, slice(0, size)

    def info(self) -> dict:
        return {"registered": self.names, "resident": list(self.resident),
                "max_resident": self.max_resident, "strategy": self.strategy}


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
