"""The engine's adapters by name: loaded from disk on the caller's thread (never in a step),
resolved when a request is made, given slots when a step runs them."""
from __future__ import annotations

import re
import threading

import torch

from livecast.engine.lora.peft import LoraAdapter, LoraError, LoraNotFound, ModuleShapes, load_adapter
from livecast.engine.lora.slots import LoraSlots

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


def parse_modules(spec: str | None) -> list[tuple[str, str]]:
    """`name=PATH,name2=PATH2` (the --lora-modules flag) as (name, path) pairs."""
    pairs = []
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, path = item.strip().partition("=")
        if not sep or not name or not path:
            raise ValueError(f"lora_modules entries are name=PATH, got {item.strip()!r}")
        pairs.append((name, path))
    return pairs


class LoraRegistry:
    def __init__(self, enabled: bool, shapes: ModuleShapes, max_loras: int, max_rank: int, device,
                 base_name: str, kernel: str = "torch", dtype: torch.dtype = torch.float32) -> None:
        self.enabled, self.shapes, self.max_rank, self.base_name = enabled, shapes, max_rank, base_name
        self.dtype = dtype  # adapters' A and B, in host memory and in the slots
        self.adapters: dict[str, LoraAdapter] = {}
        self.slots = LoraSlots(shapes, max_loras, max_rank, device, kernel, dtype) if enabled else None
        self._lock = threading.Lock()  # loads from several threads; the step only reads the dict

    def add(self, name: str, path: str) -> LoraAdapter:
        if not self.enabled:
            raise LoraError(f"cannot load adapter {name!r}: LoRA is not enabled (start with --enable-lora or "
                            "--lora-modules)")
        if not isinstance(name, str) or not _NAME.match(name):
            raise LoraError(f"adapter name {name!r} must be 1-128 letters, digits or ._:/- and start with a "
                            "letter or digit")
        if name == self.base_name:
            raise LoraError(f"adapter name {name!r} is the base model's")
        if name in self.adapters:
            raise LoraError(f"an adapter named {name!r} is already loaded (unload it first)")
        adapter = load_adapter(name, path, self.shapes, self.max_rank, self.dtype)  # the disk read, outside the lock
        with self._lock:
            if name in self.adapters:
                raise LoraError(f"an adapter named {name!r} is already loaded (unload it first)")
            self.adapters[name] = adapter
        return adapter

    def remove(self, name: str) -> LoraAdapter:
        """Requests already running on the adapter finish with it; new ones cannot name it."""
        with self._lock:
            adapter = self.adapters.pop(name, None)
        if adapter is None:
            raise LoraNotFound(f"no adapter named {name!r} is loaded")
        return adapter

    def activate(self, scheduled) -> dict[int, int] | None:
        """Slots for the adapters of a step's chunks (uid -> slot), None when none has one."""
        adapters = [c.lora for c in scheduled if c.lora is not None]
        return self.slots.activate(adapters) if adapters else None

    def resolve(self, name: str | None) -> LoraAdapter | None:
        if name is None:
            return None
        adapter = self.adapters.get(name)
        if adapter is None:
            raise LoraNotFound(f"the model {name!r} does not exist (no adapter of that name is loaded)")
        return adapter
