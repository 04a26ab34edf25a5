"""One step's LoRA rows: which slot each token row uses (-1: the base model alone), built once per
step, and the batched low-rank update every adapted projection adds to the base GEMM's output.

Three kernels compute `y[t] += B[slot] @ (A[slot] @ x[t])` for all rows at once:
- `native`: kernels.native.lora_gemm, one call over every row (BGMV-style gather per row, a
  fixed reduction order, so rows do not depend on the batch: the deterministic mode's);
- `triton`: kernels.lora, BGMV for decode rows and SGMV for the prefill segments (CUDA);
- `torch`: one pair of matmuls per adapter present in the step (grouped, SGMV-like).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from livecast.engine.backend import Backend
from livecast.engine.lora.slots import GROUPS, LoraSlots, Stack


def choose_kernel(backend: Backend) -> str:
    if backend.triton:
        return "triton"
    if backend.native:  # the x86 kernels built
        return "native"
    if backend.deterministic:
        raise ValueError("deterministic numerics with LoRA need the native LoRA kernel")
    return "torch"


@dataclass(slots=True)
class LoraBatch:
    slots: LoraSlots
    kernel: str
    token_slots: torch.Tensor  # (num_tokens,) int64 on the device
    parts: frozenset[str]  # the projections (q_proj, ...) some row's adapter touches
    slot_rows: list[tuple[int, slice | torch.Tensor]]  # the torch kernel: each slot's rows
    num_decodes: int  # the first rows are decodes (one token each), then prefill segments
    seg_starts: torch.Tensor  # (segments + 1,) the prefill rows' runs of one slot (SGMV)
    seg_slots: torch.Tensor  # (segments,)

    def add(self, layer: int, group: str, y: torch.Tensor, x: torch.Tensor) -> None:
        """y (num_tokens, out) += each row's adapter update of x (num_tokens, in), in place: each
        part of the fused projection (q, k, v; gate, up) into its own columns of y."""
        stacks = self.slots.stacks[layer]
        for part in GROUPS[group]:
            stack = stacks.get(part) if part in self.parts else None
            if stack is not None:  # else no adapter of the step touches this part of this layer
                self._add(stack, y[:, stack.columns], x)

    def _add(self, stack: Stack, y: torch.Tensor, x: torch.Tensor) -> None:
        if self.kernel == "native":
            from livecast.kernels.native.lora_gemm import add_lora_native

            add_lora_native(y, x, stack.a, stack.b, self.token_slots, self.slots.scales)
        elif self.kernel == "triton":
            from livecast.kernels.lora import add_lora_bgmv, add_lora_sgmv

            d = self.num_decodes
            if d:
                add_lora_bgmv(y[:d], x[:d], stack.a, stack.b, self.token_slots[:d], self.slots.scales)
            if d < y.shape[0]:
                add_lora_sgmv(y[d:], x[d:], stack.a, stack.b, self.seg_starts, self.seg_slots, self.slots.scales)
        else:
            for slot, rows in self.slot_rows:
                delta = (x[rows].float() @ stack.a[slot].float().T) @ stack.b[slot].float().T
                y[rows] = (y[rows].float() + self.slots.scales[slot] * delta).to(y.dtype)


def build_lora_batch(row_slots: list[tuple[int, int]], num_decodes: int, slots: LoraSlots, kernel: str,
                     device: torch.device) -> LoraBatch | None:
    """`row_slots`: per scheduled chunk in batch order, (its number of token rows, its slot or -1).
    None when no row has an adapter (the step runs the base model alone)."""
    if all(slot < 0 for _, slot in row_slots):
        return None
    per_token = torch.repeat_interleave(torch.tensor([s for _, s in row_slots], dtype=torch.int64),
                                        torch.tensor([n for n, _ in row_slots], dtype=torch.int64))
    slot_rows = []
    for slot in sorted({s for _, s in row_slots if s >= 0}):
        rows = torch.nonzero(per_token == slot).flatten()
        first, last = int(rows[0]), int(rows[-1])
        slot_rows.append((slot, slice(first, last + 1) if last - first + 1 == rows.numel() else rows.to(device)))
    # prefill segments: runs of one slot among the rows after the decodes
    starts, seg_slots = [0], []
    for n, slot in row_slots[num_decodes:]:
        if seg_slots and seg_slots[-1] == slot:
            starts[-1] += n
        else:
            seg_slots.append(slot)
            starts.append(starts[-1] + n)
    parts = frozenset().union(*(slots.parts[s] for s, _ in slot_rows))
    return LoraBatch(slots, kernel, per_token.to(device), parts, slot_rows, num_decodes,
                     torch.tensor(starts, dtype=torch.int64, device=device),
                     torch.tensor(seg_slots, dtype=torch.int64, device=device))
