"""Style LoRAs per stream: adapters in diffusers' LoRA file format, applied row by row inside one
batched UNet call, so streams with different LoRAs (or none) still share every UNet call.

Files (diffusers/PEFT, older diffusers and kohya key layouts, UNet and text-encoder layers) are
read and checked in livecast.streamdiff.lora_format. Text-encoder layers are applied when the
stream's prompts are encoded (StreamPipeline caches those embeddings per adapter and scale).

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

import os
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from .lora_format import LoraAdapter, LoraError, LoraLayer, load_adapter

STRATEGIES = ("batched", "gather", "grouped")
DEFAULT_STRATEGY = "gather"  # measured fastest on the demo model: docs/BENCHMARKS.md

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
