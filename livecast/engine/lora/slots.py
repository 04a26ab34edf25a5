"""The resident adapters: `max_loras` slots of stacked A/B weights per layer and fused projection,
filled from host memory (LoraAdapter) least recently used first. A step's batched LoRA op
gathers each row's slot from these stacks.

The engine fuses projections (q|k|v, gate|up), so a slot's stack for a fused projection holds one
rank block per part: A (n * max_rank, in) stacks the parts' A rows, B (out, n * max_rank) is block
diagonal (each part's B in its own output rows and rank columns). A part an adapter does not
target, or a rank below max_rank, stays zero.
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
    a: torch.Tensor  # (num_slots, n * max_rank, in)
    b: torch.Tensor  # (num_slots, out, n * max_rank)
    out_offsets: tuple[int, ...]  # each part's first output row


class LoraSlots:
    def __init__(self, shapes: ModuleShapes, num_slots: int, max_rank: int, device: torch.device,
                 kernel: str = "torch") -> None:
        self.num_slots, self.max_rank, self.device = num_slots, max_rank, device
        self.kernel = kernel  # engine.lora.batch's kernel for the steps
        self.shapes = shapes
        # allocated the first time an adapter touches the fused projection: q|v adapters never
        # pay for MLP stacks
        self.stacks: list[dict[str, Stack]] = [{} for _ in range(shapes.num_layers)]
        self.scales = torch.ones(num_slots, device=device)  # the adapters' scales live in their B
        self.resident: OrderedDict[int, int] = OrderedDict()  # adapter uid -> slot, least recent first
        self.groups: dict[int, frozenset[str]] = {}  # slot -> the fused projections its adapter touches
        self.num_loads = 0

    def _stack(self, layer: int, group: str) -> Stack:
        stack = self.stacks[layer].get(group)
        if stack is None:
            parts = GROUPS[group]
            outs = [self.shapes.shapes[p][0] for p in parts]
            rank, in_f = len(parts) * self.max_rank, self.shapes.shapes[parts[0]][1]
            stack = Stack(torch.zeros(self.num_slots, rank, in_f, device=self.device),
                          torch.zeros(self.num_slots, sum(outs), rank, device=self.device),
                          tuple(sum(outs[:i]) for i in range(len(parts))))
            self.stacks[layer][group] = stack
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
        r = self.max_rank
        for layer in self.stacks:
            for stack in layer.values():
                stack.a[slot].zero_()
                stack.b[slot].zero_()
        for (layer, part), (a, b) in adapter.modules.items():
            group = GROUP_OF[part]
            stack = self._stack(layer, group)
            i = GROUPS[group].index(part)
            rank, out0 = a.shape[0], stack.out_offsets[i]
            stack.a[slot, i * r:i * r + rank].copy_(a)
            stack.b[slot, out0:out0 + b.shape[0], i * r:i * r + rank].copy_(b)
        self.groups[slot] = frozenset(GROUP_OF[p] for p in adapter.targets)
        self.num_loads += 1
