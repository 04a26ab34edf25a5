"""Continuous batching: which sequences run this step, under token and sequence budgets.

Each step: running sequences first (decodes, then continuing prefill chunks), then swapped-out
requests coming back, then new requests in arrival order. A prefill is cut into chunks so that it
never stalls running streams. When blocks run out the newest running request is preempted: its
blocks go to CPU swap space while that lasts, otherwise they are freed and recomputed later.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from livecast.engine.block_manager import BlockManager
from livecast.engine.sequence import Sequence, SequenceGroup, SequenceStatus
from livecast.engine.spec import SpecState, Speculator


@dataclass(slots=True)
class SchedulerConfig:
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    preemption_mode: str = "swap"  # "swap" while CPU swap space lasts, else recompute
    max_loras: int = 1 << 30  # distinct LoRA adapters one step may mix

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError("max_num_batched_tokens must be >= max_num_seqs so every running "
                             f"sequence can decode each step ({self.max_num_batched_tokens} < {self.max_num_seqs})")
        if self.preemption_mode not in ("swap", "recompute"):
            raise ValueError(f"preemption_mode must be 'swap' or 'recompute', got {self.preemption_mode!r}")


@dataclass(slots=True)
class ScheduledChunk:
    """One sequence's share of a step, as plain data: what the runner computes, and the ids that
    let postprocess find the sequence again."""

    request_id: str
    seq_id: int
    token_ids: list[int]  # the chunk's tokens, at positions start_pos, start_pos + 1, ...
    start_pos: int  # tokens of the sequence already in the KV cache
    block_table: list[int]  # the sequence's blocks, the chunk's slots included
    samples: bool  # the chunk reaches the sequence's last token: its logits pick the next one
    prefill: bool  # the chunk starts inside the prompt (a first prefill or a recompute)
    prompt_logprob_span: tuple[int, int] | None = None  # positions [first, last) whose logits score prompt tokens
    # speculative decoding: guesses at the tokens after the last one, computed after it in this chunk
    # (token_ids ends with them) and checked against the model in postprocess; never in seq.token_ids
    draft_token_ids: list[int] = field(default_factory=list)
    lora: Any = None  # the request's LoRA adapter (engine.lora.LoraAdapter), None for the base model

    @property
    def num_new_tokens(self) -> int:
        return len(self.token_ids)


@dataclass(slots=True)
class SchedulerOutput:
    """What one step runs: handed to the model runner, never live scheduler state."""

    scheduled: list[ScheduledChunk] = field(default_factory=list)
    blocks_to_swap_out: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_swap_in: list[tuple[int, int]] = field(default_factory=list)
    blocks_to_copy: list[tuple[int, int]] = field(default_factory=list)
    num_preempted: int = 0


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager,
                 speculator: Speculator | None = None) -> None:
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.preemption_mode = config.preemption_mode
        self.max_loras = config.max_loras
        self.block_manager = block_manager
        self.speculator = speculator
        self.waiting: deque[SequenceGroup] = deque()
        self.running: list[SequenceGroup] = []
        self.swapped: deque[SequenceGroup] = deque()
        self.num_preemptions = 0

    def add(self, group: SequenceGroup) -> None:
        self.waiting.append(group)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    def num_running_seqs(self) -> int:
        return sum(len(g.unfinished_seqs()) for g in self.running)

    def find(self, request_id: str) -> SequenceGroup | None:
        for queue in (self.running, self.waiting, self.swapped):
            for group in queue:
                if group.request_id == request_id:
                    return group
        return None

    def remove(self, group: SequenceGroup) -> None:
        """Take a group out of whichever queue holds it and free all its blocks."""
        for queue in (self.running, self.waiting, self.swapped):
            if group in queue:
                queue.remove(group)
        for seq in group.seqs:
            self.block_manager.free(seq)
        self._release_spec(group)

    def drop_finished(self) -> list[SequenceGroup]:
        done = [g for g in self.running if g.finished]
        self.running = [g for g in self.running if not g.finished]
        for group in done:
            self._release_spec(group)
        return done

    def _release_spec(self, group: SequenceGroup) -> None:
        if self.speculator is not None:
            self.speculator.release(group.spec)  # a draft model's KV blocks for the request

    def _lora_fits(self, group: SequenceGroup) -> bool:
        """A group may join the running ones if its adapter is among theirs or a slot is left."""
        if group.lora is None:
            return True
        running = {g.lora.uid for g in self.running if g.lora is not None}
        return group.lora.uid in running or len(running) < self.max_loras

    # -- the step ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out)
        if not out.num_preempted:
            budget = self._schedule_swapped(out, budget)
        if not out.num_preempted and not self.swapped:
            self._schedule_waiting(out, budget)
        return out

    def _schedule_running(self, out: SchedulerOutput) -> int:
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        queue = list(self.running)
        kept: list[SequenceGroup] = []
        speculate = self.speculator is not None and self.num_running_seqs() <= self.speculator.max_batch
        drafts_of = self._propose_all() if speculate else {}
        while queue:
            group = queue.pop(0)
            plan: list[tuple[Sequence, int, list[int]]] = []
            for seq in group.unfinished_seqs():
                num_new = min(seq.num_uncomputed_tokens, budget - sum(n + len(d) for _, n, d in plan))
                if num_new <= 0:
                    break
                # every group still queued keeps at least one token of the budget
                drafts = drafts_of.get(seq.seq_id, [])[:max(0, budget - num_new - len(queue))]
                plan.append((seq, num_new, drafts))
            if group.is_beam and len(plan) < len(group.unfinished_seqs()):
                plan = []  # beams advance together or not at all
            needed = sum(bm.num_blocks_needed(seq, n + len(d)) for seq, n, d in plan)
            if bm.device.num_free < needed and any(d for _, _, d in plan):
                plan = [(seq, n, []) for seq, n, _ in plan]  # drafts never cost anyone a preemption
                needed = sum(bm.num_blocks_needed(seq, n) for seq, n, _ in plan)
            while bm.device.num_free < needed and queue:
                self._preempt(queue.pop(), out)
            if bm.device.num_free < needed:
                self._preempt(group, out)
                continue
            for seq, num_new, drafts in plan:
                self._schedule_chunk(out, seq, group, num_new, drafts)
                budget -= num_new + len(drafts)
            kept.append(group)
        self.running = kept
        return budget

    def _propose_all(self) -> dict[int, list[int]]:
        """The proposer's guesses for each decoding single-sequence request that allows them, by
        seq_id, asked all at once (a draft model runs them as one batch): never past a request's
        max_tokens (the last accepted draft still yields a token), and cut to the budget left
        when the step reaches it."""
        asks = []
        for group in self.running:
            params, seq = group.params, group.seqs[0]
            if group.is_beam or params.best_of > 1 or not params.speculative or seq.num_uncomputed_tokens != 1:
                continue
            max_k = min(self.max_num_batched_tokens - 1, params.max_tokens - seq.num_output_tokens - 1)
            if max_k > 0:
                group.spec = group.spec or SpecState()
                asks.append((seq.seq_id, (group.spec, seq.token_ids, max_k)))
        return dict(zip((seq_id for seq_id, _ in asks), self.speculator.propose_many([a for _, a in asks])))

    def _schedule_swapped(self, out: SchedulerOutput, budget: int) -> int:
        bm = self.block_manager
        while self.swapped:
            group = self.swapped[0]
            seqs = group.unfinished_seqs()
            if (self.num_running_seqs() + len(seqs) > self.max_num_seqs or budget < len(seqs)
                    or not self._lora_fits(group) or not bm.can_swap_in(seqs)):
                break
            self.swapped.popleft()
            out.blocks_to_swap_in += bm.swap_in(seqs)
            plan, left = [], budget
            for seq in seqs:
                plan.append((seq, min(seq.num_uncomputed_tokens, left - (len(seqs) - len(plan) - 1))))
                left -= plan[-1][1]
            # can_swap_in reserved a block per sequence; anything more waits for the next step
            if sum(bm.num_blocks_needed(s, n) for s, n in plan) <= bm.device.num_free:
                for seq, num_new in plan:
                    self._schedule_chunk(out, seq, group, num_new)
                    budget -= num_new
            for seq in seqs:
                seq.status = SequenceStatus.RUNNING
            self.running.append(group)
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        bm = self.block_manager
        skipped: list[SequenceGroup] = []  # adapters with no slot this step keep their place in line
        while self.waiting and budget > 0:
            group = self.waiting[0]
            if not self._lora_fits(group):
                skipped.append(self.waiting.popleft())
                continue
            seqs = group.unfinished_seqs()
            if self.num_running_seqs() + len(seqs) > self.max_num_seqs:
                break
            plans, remaining, fresh_total, hits_all = [], budget, 0, []
            for seq in seqs:
                hits, fresh = bm.blocks_to_admit(seq, remaining)
                num_cached = len(hits) * bm.block_size
                num_new = min(seq.num_uncomputed_tokens - num_cached, remaining)
                if num_new <= 0:
                    break
                plans.append((seq, hits, num_new))
                fresh_total += fresh
                hits_all += hits
                remaining -= num_new
            if len(plans) < len(seqs) or not bm.can_admit(hits_all, fresh_total):
                break
            self.waiting.popleft()
            for seq, hits, num_new in plans:
                seq.num_computed_tokens = bm.admit(seq, hits)
                seq.status = SequenceStatus.RUNNING
                self._schedule_chunk(out, seq, group, num_new)
            budget = remaining
            self.running.append(group)
        self.waiting.extendleft(reversed(skipped))

    def _schedule_chunk(self, out: SchedulerOutput, seq: Sequence, group: SequenceGroup, num_new: int,
                        drafts: list[int] = ()) -> None:
        """Reserve the chunk's slots, drafts' included (copying a shared, partly filled block
        first: only the block holding the first slot can be one, every later block of a
        single-sequence table is its own), and record it as plain data."""
        out.blocks_to_copy += self.block_manager.append_slots(seq, num_new + len(drafts))
        start = seq.num_computed_tokens
        out.scheduled.append(ScheduledChunk(
            group.request_id, seq.seq_id, seq.token_ids[start:start + num_new] + list(drafts), start,
            list(self.block_manager.block_tables[seq.seq_id]), start + num_new == len(seq.token_ids),
            start < seq.num_prompt_tokens, _prompt_logprob_span(group, start, num_new), list(drafts), group.lora))

    def _preempt(self, group: SequenceGroup, out: SchedulerOutput) -> None:
        bm = self.block_manager
        seqs = group.unfinished_seqs()
        out.num_preempted += 1
        self.num_preemptions += 1
        group.num_preemptions += 1
        self._release_spec(group)
        if self.preemption_mode == "swap" and bm.can_swap_out(seqs):
            out.blocks_to_swap_out += bm.swap_out(seqs)
            for seq in seqs:
                seq.status = SequenceStatus.SWAPPED
            self.swapped.append(group)
            return
        for seq in seqs:
            bm.free(seq)
            seq.num_computed_tokens = 0
            seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(group)


def _prompt_logprob_span(group: SequenceGroup, start: int, num_new: int) -> tuple[int, int] | None:
    """Positions [first, last) of a chunk whose logits score prompt tokens that still lack
    logprobs (position p scores prompt token p + 1; a recompute skips what it already has)."""
    if group.is_beam or group.params.prompt_logprobs is None:
        return None
    done = len(group.prompt_logprobs or [None])  # entry 0 is None: nothing scores token 0
    first, last = max(start, done - 1), min(start + num_new, len(group.prompt_token_ids) - 1)
    return (first, last) if first < last else None
