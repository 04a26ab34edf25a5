"""Draft-model speculation (`--speculative draft --draft-model PATH`): a smaller Llama-family model
with the target's tokenizer guesses each sequence's next k tokens greedily.

The draft keeps its own paged KV cache (its own ModelRunner and BlockManager, prefix caching off),
so a step computes only what is new to it. Per request, a draft `Sequence` on the SpecState holds
the tokens whose K/V the draft has (`num_computed_tokens == len(token_ids)` between steps). Each
proposal:

1. roll back to the target: the draft keeps its longest common prefix with the target's tokens
   (never the last one: its logits give the first guess) and frees its blocks past it; the slots
   it keeps of a partly rejected block are simply overwritten;
2. catch up: one chunk over the target's tokens the draft has not computed (the prompt on the
   first call, then the tokens accepted last step), in pieces of at most `max_chunk_tokens`;
3. k - 1 decode steps, each feeding the guess before: the argmax of the draft's logits.

All speculating sequences of a step share each forward (`propose_many`). A sequence whose tokens
no longer fit the draft's cache gives its draft blocks back and drafts nothing this step, never
an error and never a preemption of the target; the engine's verification keeps the output exact
whatever the draft guesses.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import torch

from livecast.engine.backend import Backend
from livecast.engine.block_manager import BlockManager
from livecast.engine.model_input import build_model_input
from livecast.engine.model_runner import ModelRunner
from livecast.engine.scheduler import ScheduledChunk
from livecast.engine.sequence import Sequence
from livecast.engine.spec.speculator import SpecState

logger = logging.getLogger("livecast.engine")

# texts both tokenizers must split into the same ids (beside an equal vocab_size)
VOCAB_PROBES = ("Hello, world! The quick brown fox jumps over the lazy dog.",
                "def main(argv: list[str]) -> int:\n    return 0  # 42\n",
                "Grüße aus Köln, 東京 and naïve café: 3.14159 ≈ π.",
                '{"city": "Rome", "is_capital": true}')


@dataclass(slots=True)
class DraftProposer:
    """Greedy guesses of a draft model over its own paged KV cache (`runner`, `block_manager`)."""

    runner: ModelRunner
    block_manager: BlockManager
    device: torch.device
    backend: Backend
    max_positions: int  # the draft's rotary table: no position at or past it
    max_chunk_tokens: int = 1024  # catch-up tokens per sequence per forward
    name: str = "draft"
    num_forwards: int = 0  # counters since start
    num_fallbacks: int = 0  # proposals refused for want of draft blocks
    _seq_ids: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def from_engine(cls, engine) -> "DraftProposer":
        """Load `engine.config.draft_model` on the engine's device and backend, check its tokenizer
        against the engine's, and give it a KV cache of `draft_kv_cache_memory` bytes (default: a
        quarter of the target's)."""
        from livecast.engine.model_loader import build_model, load_config, resolve_model

        config = engine.config
        path = resolve_model(config.draft_model)
        hf = load_config(path)
        check_vocab(engine.model_name, engine.hf_config, engine.tokenizer, config.draft_model, path, hf)
        model, dtype, _, detail = build_model(config.draft_model, path, hf, engine.device, config.torch_dtype(),
                                              config.dtype, engine.backend, engine.max_model_len, "auto",
                                              config.weight_kernel)
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        kv_dtype = torch.float32 if engine.backend.deterministic else dtype  # as the target's cache
        block_bytes = ModelRunner.bytes_per_block(hf.num_hidden_layers, hf.num_key_value_heads, head_dim,
                                                  config.block_size, kv_dtype)
        budget = config.draft_kv_cache_memory
        if budget is None:
            budget = sum(k.nbytes + v.nbytes for k, v in engine.runner.kv_caches) // 4
            if engine.device.type == "cuda":  # the target's cache took its share of free memory first
                budget = min(budget, torch.cuda.mem_get_info(engine.device)[0] // 2)
        num_blocks = budget // block_bytes
        if num_blocks < 1:
            raise ValueError(f"draft KV cache budget {budget} bytes holds no block of {block_bytes} bytes; "
                             "raise draft_kv_cache_memory")
        runner = ModelRunner(model, hf.num_hidden_layers, hf.num_key_value_heads, head_dim, num_blocks, 0,
                             config.block_size, kv_dtype, engine.device, engine.backend)
        logger.info("draft model %s (%s, %s): %s · draft KV cache: %d blocks x %d tokens (%.2f GiB)",
                    config.draft_model, hf.architectures[0], dtype, detail, num_blocks, config.block_size,
                    num_blocks * block_bytes / (1 << 30))
        return cls(runner, BlockManager(num_blocks, config.block_size, enable_prefix_caching=False),
                   engine.device, engine.backend, engine.max_model_len, config.max_num_batched_tokens,
                   f"draft ({config.draft_model})")

    # -- the Proposer interface ----------------------------------------------------------------
    def propose(self, token_ids: list[int], k: int, state=None) -> list[int]:
        return self.propose_many([(state, token_ids, k)])[0]

    def propose_many(self, requests: list[tuple[SpecState | None, list[int], int]]) -> list[list[int]]:
        """Up to k guesses after each (SpecState, token_ids, k): one forward per draft position
        for all of them (a long catch-up takes a few). A None state drafts from scratch and keeps
        nothing."""
        states = [SpecState() if state is None else state for state, _, _ in requests]
        guesses: list[list[int]] = [[] for _ in requests]
        feeds: dict[int, tuple[Sequence, list[int], int]] = {}  # index -> (draft seq, tokens to feed, k)
        for i, (state, (_, token_ids, k)) in enumerate(zip(states, requests)):
            seq, k = self._prepare(state, token_ids, k)
            if k > 0:
                feeds[i] = (seq, token_ids[seq.num_computed_tokens:], k)
        while feeds:
            picks = self._forward([(seq, tokens[:self.max_chunk_tokens], len(tokens) <= self.max_chunk_tokens)
                                   for seq, tokens, _ in feeds.values()])
            for i, (seq, tokens, k) in list(feeds.items()):
                if seq.seq_id not in picks:  # a long catch-up goes on in the next forward
                    feeds[i] = (seq, tokens[self.max_chunk_tokens:], k)
                    continue
                guesses[i].append(picks[seq.seq_id])
                if len(guesses[i]) < k:
                    feeds[i] = (seq, guesses[i][-1:], k)
                else:
                    del feeds[i]
        for state, (given, _, _) in zip(states, requests):
            if given is None:
                self.release(state)
        return guesses

    def _forward(self, pieces: list[tuple[Sequence, list[int], bool]]) -> dict[int, int]:
        """Feed each sequence its piece (as the engine runs the target: chunks → ModelInput →
        runner); by seq_id, the argmax after the piece of each one that samples. No chunk is marked
        prefill: a step of a few rows per sequence then runs as decodes and verifications do (the
        native fused stack where the backend has one; a long catch-up still takes the prefill path)."""
        chunks = [ScheduledChunk("draft", seq.seq_id, piece, seq.num_computed_tokens,
                                 list(self.block_manager.block_tables[seq.seq_id]), samples, False)
                  for seq, piece, samples in pieces]
        batch = build_model_input(chunks, self.block_manager.block_size, self.device, self.backend)
        logits = self.runner.forward(batch)  # (num sampling rows, vocab_size)
        self.num_forwards += 1
        for seq, piece, _ in pieces:
            seq.token_ids += piece
            seq.num_computed_tokens += len(piece)
        rows = {chunk.seq_id: row for chunk, row in zip(batch.scheduled, batch.sample_rows) if row >= 0}
        if not rows:
            return {}
        return dict(zip(rows, logits[list(rows.values())].argmax(dim=-1).tolist()))

    def release(self, state: SpecState) -> None:
        """The request finished, was aborted or preempted: its draft blocks go back."""
        seq = getattr(state, "proposer_state", None)
        if isinstance(seq, Sequence):
            self.block_manager.free(seq)
            state.proposer_state = None

    # -- one sequence's draft state ------------------------------------------------------------
    def rollback(self, state: SpecState, token_ids: list[int]) -> Sequence:
        """The request's draft sequence, cut back to its longest common prefix with `token_ids`
        (short of the last token), its blocks past that freed. Made on the first call."""
        seq = state.proposer_state
        if not isinstance(seq, Sequence):
            seq = state.proposer_state = Sequence(next(self._seq_ids), [], 0)
            self.block_manager.admit(seq, [])
        keep = _common_prefix(seq.token_ids, token_ids, min(seq.num_computed_tokens, len(token_ids) - 1))
        del seq.token_ids[keep:]
        seq.num_computed_tokens = keep
        self.block_manager.trim(seq)
        return seq

    def _prepare(self, state: SpecState, token_ids: list[int], k: int) -> tuple[Sequence | None, int]:
        """Roll back and reserve slots for the catch-up and k - 1 fed guesses, with k cut to what
        the draft's positions and free blocks allow; (None, 0) when not even one guess fits."""
        k = min(k, self.max_positions - len(token_ids) + 1)
        if k <= 0 or not token_ids:
            return None, 0
        seq = self.rollback(state, token_ids)
        num_new = len(token_ids) - seq.num_computed_tokens
        bm = self.block_manager
        while k > 0 and bm.num_blocks_needed(seq, num_new + k - 1) > bm.device.num_free:
            k -= 1
        if k == 0:  # the draft cache is full: this request's blocks go to the others
            self.num_fallbacks += 1
            self.release(state)
            return None, 0
        bm.append_slots(seq, num_new + k - 1)  # no copies: draft tables are never shared
        return seq, k


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of a and b, at most `limit`: the two differ at most in their
    last few tokens (rejected guesses), so the rest is one list comparison."""
    start = max(0, limit - 64)
    if a[:start] != b[:start]:
        start = 0
    return next((i for i in range(start, limit) if a[i] != b[i]), limit)


# -- loading -------------------------------------------------------------------------------------
def check_vocab(target: str, target_hf, target_tokenizer, draft: str, draft_path, draft_hf) -> None:
    """The draft must speak the target's token ids: the same vocab_size and the same ids for a
    few probe texts. Raises ValueError naming both models."""
    from livecast.engine.model_loader import load_tokenizer

    if draft_hf.vocab_size != target_hf.vocab_size:
        raise ValueError(f"draft model {draft!r} has vocab_size {draft_hf.vocab_size} but the target model "
                         f"{target!r} has {target_hf.vocab_size}: the draft needs the target's tokenizer")
    draft_tokenizer = load_tokenizer(draft_path)
    for text in VOCAB_PROBES:
        if draft_tokenizer.encode(text) != target_tokenizer.encode(text):
            raise ValueError(f"draft model {draft!r} and target model {target!r} tokenize {text!r} differently: "
                             "the draft needs the target's tokenizer")
