"""The resident adapters: `max_loras` slots of stacked A/B weights per layer and target
projection, filled from host memory (LoraAdapter) least recently used first. A step's batched
LoRA op gathers each row's slot from these stacks.

The engine fuses projections (q|k|v, gate|up); each part keeps its own stack, A (S, max_rank, in)
and B (S, out_part, max_rank), and its update lands in its columns of the fused output, so no
zero blocks are stored or multiplied. Stacks are allocated the first time an adapter touches
that part of that layer: q|v adapters never pay for MLP stacks.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from livecast.engine.lora.peft import LoraAdapter, LoraError, ModuleShapes

# fused projection -> its parts, in the order their outputs are concatenated
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
          "down": ("down_proj",)}
GROUP_OF = {part: group for group, parts in GROUPS.items() for part in parts}


@dataclass(slots=True)
class Stack:
    a: torch.Tensor  # (num_slots, max_rank, in)
    b: torch.Tensor  # (num_slots, out_part, max_rank)
    columns: slice  # the part's output columns in its fused projection's output


class LoraSlots:
    def __init__(self, shapes: ModuleShapes, num_slots: int, max_rank: int, device: torch.device,
                 kernel: str = "torch", dtype: torch.dtype = torch.float32) -> None:
        self.num_slots, self.max_rank, self.device, self.dtype = num_slots, max_rank, device, dtype
        self.kernel = kernel  # engine.lora.batch's kernel for the steps
        self.shapes = shapes
        self.stacks: list[dict[str, Stack]] = [{} for _ in range(shapes.num_layers)]  # part -> stack
        offsets = {}
        for parts in GROUPS.values():
            start = 0
            for part in parts:
                out = shapes.shapes[part][0]
                offsets[part] = slice(start, start + out)
                start += out
        self.columns = offsets
        self.scales = torch.ones(num_slots, device=device)  # each slot's adapter's alpha / r, float32
        self.resident: OrderedDict[int, int] = OrderedDict()  # adapter uid -> slot, least recent first
        self.parts: dict[int, frozenset[str]] = {}  # slot -> the parts its adapter touches
        self.num_loads = 0

    def _stack(self, layer: int, part: str) -> Stack:
        stack = self.stacks[layer].get(part)
        if stack is None:
            out, in_f = self.shapes.shapes[part]
            stack = Stack(torch.zeros(self.num_slots, self.max_rank, in_f, device=self.device, dtype=self.dtype),
                          torch.zeros(self.num_slots, out, self.max_rank, device=self.device, dtype=self.dtype),
                          self.columns[part])
            self.stacks[layer][part] = stack
        return stack

    @property
    def nbytes(self) -> int:
        return sum(s.a.nbytes + s.b.nbytes for layer in self.stacks for s in layer.values())

    def activate(self, adapters: list[LoraAdapter]) -> dict[int, int]:
        """Slots for this step's adapters (uid -> slot), loading the ones not resident into free
        slots or over the least recently used adapter this step does not need."""
        wanted = {a.uid: a for a in adapters}
        if len(wanted) > self.num_slots:
            raise LoraError(f"{len(wanted)} adapters in one step, but only {self.num_slots} slots (max_loras)")
        for uid in wanted:
            if uid in self.resident:
                self.resident.move_to_end(uid)
        for uid, adapter in wanted.items():
            if uid in self.resident:
                continue
            used = set(self.resident.values())
            free = [s for s in range(self.num_slots) if s not in used]
            if free:
                slot = free[0]
            else:
                victim = next(u for u in self.resident if u not in wanted)
                slot = self.resident.pop(victim)
            self._write(slot, adapter)
            self.resident[uid] = slot
        return {uid: self.resident[uid] for uid in wanted}

    def _write(self, slot: int, adapter: LoraAdapter) -> None:
        for layer in self.stacks:
            for stack in layer.values():
                stack.a[slot].zero_()
                stack.b[slot].zero_()
        for (layer, part), (a, b) in adapter.modules.items():
            stack = self._stack(layer, part)
            rank = a.shape[0]
            stack.a[slot, :rank].copy_(a)
            stack.b[slot, :, :rank].copy_(b)
        self.scales[slot] = adapter.scale
        self.parts[slot] = frozenset(adapter.targets)
        self.num_loads += 1
