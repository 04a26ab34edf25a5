"""Turn the scheduler's plain-data chunks into the step's tensors, built once: ids, positions,
slots, tables, and which logit rows sampling and prompt logprobs read."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from livecast.engine.backend import Backend, default_backend
from livecast.engine.layers.attention import AttentionMetadata
from livecast.engine.lora.batch import LoraBatch, build_lora_batch
from livecast.engine.lora.slots import LoraSlots
from livecast.engine.scheduler import ScheduledChunk


@dataclass(slots=True)
class ModelInput:
    input_ids: torch.Tensor  # (num_tokens,)
    positions: torch.Tensor  # (num_tokens,)
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # (num_logit_rows,) token rows whose logits are needed
    scheduled: list[ScheduledChunk]  # batch order: decodes first, then prefill chunks
    sample_rows: list[int]  # per scheduled seq: its (first) row in the logits, or -1
    prompt_logprob_rows: list[tuple[int, int] | None]  # per scheduled seq: (first row, count)
    lora: LoraBatch | None = None  # the rows' LoRA slots, when some row runs an adapter


def _padded(tables: list[list[int]], width: int, device) -> torch.Tensor:
    if not tables:
        return torch.zeros((0, max(width, 1)), dtype=torch.int32, device=device)
    return torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=device)


def build_model_input(scheduled: list[ScheduledChunk], block_size: int, device: torch.device,
                      backend: Backend | None = None, lora_slots: LoraSlots | None = None,
                      slot_of: dict[int, int] | None = None) -> ModelInput:
    """`slot_of`: the LoRA slot of each adapter (by uid) in the step, from `lora_slots.activate`."""
    # decodes sorted by context so the torch path can gather each length bucket without much padding
    decodes = sorted((s for s in scheduled if s.num_new_tokens == 1), key=lambda s: s.start_pos)
    prefills = [s for s in scheduled if s.num_new_tokens > 1]
    ordered = decodes + prefills
    tables = [s.block_table for s in ordered]
    width = max((len(t) for t in tables), default=1)

    input_ids: list[int] = []
    starts: list[int] = []
    q_lens: list[int] = []
    seq_lens: list[int] = []
    logit_rows: list[int] = []
    sample_rows: list[int] = []
    plp_rows: list[tuple[int, int] | None] = []
    for s in ordered:
        c, n = s.start_pos, s.num_new_tokens
        starts.append(len(input_ids))
        input_ids.extend(s.token_ids)
        q_lens.append(n)
        seq_lens.append(c + n)
        span = s.prompt_logprob_span
        if span is not None:
            rows = list(range(starts[-1] + span[0] - c, starts[-1] + span[1] - c))
            plp_rows.append((len(logit_rows), len(rows)))
            logit_rows.extend(rows)
        else:
            plp_rows.append(None)
        if s.samples:
            # a speculative chunk samples after its last token and after each draft: rows
            # sample_rows[i], sample_rows[i] + 1, ..., one per draft more
            first = starts[-1] + n - 1 - len(s.draft_token_ids)
            if logit_rows and logit_rows[-1] == first:
                sample_rows.append(len(logit_rows) - 1)
            else:
                sample_rows.append(len(logit_rows))
                logit_rows.append(first)
            logit_rows.extend(range(first + 1, starts[-1] + n))
        else:
            sample_rows.append(-1)

    cpu = torch.device("cpu")
    q_lens_t = torch.tensor(q_lens, dtype=torch.int64)
    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int64)
    token_seq = torch.repeat_interleave(torch.arange(len(ordered)), q_lens_t)
    starts_t = torch.tensor(starts, dtype=torch.int64)
    positions = (torch.arange(len(input_ids)) - starts_t[token_seq]) + (seq_lens_t - q_lens_t)[token_seq]
    all_tables = _padded(tables, width, cpu).long()
    slot_mapping = all_tables[token_seq, positions // block_size] * block_size + positions % block_size

    num_decodes = len(decodes)
    prefill_starts = starts[num_decodes:]
    first_prefill = prefill_starts[0] if prefill_starts else 0
    cu = [p - first_prefill for p in prefill_starts] + [len(input_ids) - first_prefill]
    attn = AttentionMetadata(
        slot_mapping=slot_mapping.to(device),
        num_decodes=num_decodes,
        decode_block_tables=_padded(tables[:num_decodes], width, device),
        decode_context_lens=torch.tensor(seq_lens[:num_decodes], dtype=torch.int32, device=device),
        decode_buckets=_buckets(seq_lens[:num_decodes]),
        prefill_block_tables=_padded(tables[num_decodes:], width, device),
        prefill_cu_seqlens_q=torch.tensor(cu if prefills else [0], dtype=torch.int32, device=device),
        prefill_seq_lens=torch.tensor(seq_lens[num_decodes:], dtype=torch.int32, device=device),
        prefill_chunks=[(starts[i], q_lens[i], seq_lens[i]) for i in range(num_decodes, len(ordered))],
        backend=backend or default_backend(),
    )
    # every token a single query over its own sequence, up to itself: the deterministic mode's
    # layout for every step, and the native fused stack's for a step of decodes and speculative
    # verifications (a few rows per sequence past its prompt), so verifying runs like decoding
    verify = attn.backend.native and prefills and not any(s.prefill for s in prefills)
    if attn.backend.deterministic or verify:
        attn.token_block_tables = all_tables[token_seq].to(device, torch.int32)
        attn.token_context_lens = (positions + 1).to(device, torch.int32)
    return ModelInput(
        input_ids=torch.tensor(input_ids, dtype=torch.int64, device=device),
        positions=positions.to(device),
        attn=attn,
        logits_indices=torch.tensor(logit_rows, dtype=torch.int64, device=device),
        scheduled=ordered,
        sample_rows=sample_rows,
        prompt_logprob_rows=plp_rows,
        lora=None if not slot_of else build_lora_batch(
            [(s.num_new_tokens, -1 if s.lora is None else slot_of[s.lora.uid]) for s in ordered], num_decodes,
            lora_slots, lora_slots.kernel, device),
    )


def _buckets(context_lens: list[int], max_ratio: float = 1.5) -> list[tuple[int, int, int]]:
    """(start, end, max context) runs of ascending `context_lens` whose longest is at most
    `max_ratio` x their shortest: padding each run to its own longest wastes little."""
    buckets, start = [], 0
    for i in range(1, len(context_lens) + 1):
        if i == len(context_lens) or context_lens[i] > max_ratio * context_lens[start] + 16:
            buckets.append((start, i, context_lens[i - 1]))
            start = i
    return buckets
