"""The step's third beat: advance the scheduled sequences, record prompt logprobs, sample, and
append the new tokens (stops, forks for best_of, beams) through the OutputProcessor, and verify
speculative drafts.

Verification is exact by construction: at each position the sampler draws from the target's logits
with the sequence's state as it stands (grammar, penalties, min_tokens, its generator), and a draft
is accepted when the draw equals it. A proposer's draft is a point mass, so this is the rejection
rule of Leviathan et al. / Chen et al. (accept with p(draft), else draw from the residual): the
output distribution is the target's under every logits processor, and each emitted token costs one
draw from the request's generator, so a seeded request emits the same tokens with or without it.

It reads the model's logits and the plain-data chunks the scheduler handed out, finding each
sequence again by its request and sequence ids; it never sees scheduler queues. A failure that
belongs to one request (its sampling inputs, its grammar, its detokenizing) fails that request
alone: the batch is sampled again row by row to find it, and the others carry on.
"""
from __future__ import annotations

import torch

from livecast.engine.block_manager import BlockManager
from livecast.engine.model_input import ModelInput
from livecast.engine.sequence_updates import OutputProcessor
from livecast.engine.sampler import SamplerOutput, SamplingRow, sample
from livecast.engine.scheduler import ScheduledChunk
from livecast.engine.sequence import Sequence, SequenceGroup
from livecast.engine.spec import Speculator


class Postprocessor:
    def __init__(self, block_manager: BlockManager, processor: OutputProcessor, eos_token_ids: set[int],
                 speculator: Speculator | None = None) -> None:
        self.block_manager, self.processor, self.eos_token_ids = block_manager, processor, eos_token_ids
        self.speculator = speculator
        self.failed: dict[str, Exception] = {}  # this step's failed requests (cleared each call)
        self.num_accepted = 0  # this step's accepted drafts

    def __call__(self, batch: ModelInput, logits: torch.Tensor,
                 requests: dict[str, SequenceGroup]) -> tuple[dict[str, SequenceGroup], int]:
        """The groups that got new tokens, and how many tokens were generated; requests that failed
        on their own are in `self.failed` (their error), not in the groups returned."""
        self.failed = {}
        touched: dict[str, SequenceGroup] = {}
        rows, picks, beam_rows, verifies = [], [], {}, []
        for chunk, row, plp_rows in zip(batch.scheduled, batch.sample_rows, batch.prompt_logprob_rows):
            group = requests[chunk.request_id]
            seq = _find(group, chunk.seq_id)
            if plp_rows is not None:
                _record_prompt_logprobs(group, logits, *plp_rows)
            # drafts count once verified: until then only the last token's K/V is known good
            seq.num_computed_tokens += chunk.num_new_tokens - len(chunk.draft_token_ids)
            self.block_manager.mark_computed(seq)
            if row < 0:
                continue
            touched[group.request_id] = group
            if group.is_beam:
                beam_rows.setdefault(group.request_id, (group, []))[1].append((seq, row))
                continue
            # best_of > 1: the first sample row forks the prompt's sequence into best_of copies
            repeat = 1 if group.forked or group.params.best_of == 1 else group.params.best_of
            rows += [row] * repeat
            picks += [(group, seq)] * repeat
            if chunk.draft_token_ids:
                verifies.append((group, seq, chunk, row))
        if rows:
            self._sample(logits, rows, picks)
        self.num_accepted = 0
        for group, seq, chunk, row in verifies:
            self._guarded(group, self._verify, logits, group, seq, chunk, row)
        for group, seq_rows in beam_rows.values():
            logprobs = torch.log_softmax(logits[[r for _, r in seq_rows]], dim=-1)
            self._guarded(group, self.processor.beam_step, group, [s for s, _ in seq_rows], logprobs)
        for request_id in self.failed:
            touched.pop(request_id, None)
        if self.speculator is not None:
            self._learn_finished(touched)
        return touched, len(rows) + self.num_accepted + sum(group.params.beam_width for group, _ in beam_rows.values())

    def _learn_finished(self, touched: dict[str, SequenceGroup]) -> None:
        """Requests finished this step hand their outputs to the proposer (suffix: its global tree)."""
        for group in touched.values():
            if group.finished and not group.is_beam:
                for seq in group.seqs:
                    self.speculator.request_finished(group.prompt_token_ids, seq.output_token_ids)

    def _guarded(self, group: SequenceGroup, fn, *args) -> None:
        if group.request_id in self.failed:
            return
        try:
            fn(*args)
        except Exception as exc:  # this request's own failure: it fails, the batch goes on
            self.failed[group.request_id] = exc

    def _sampling_row(self, group: SequenceGroup, seq: Sequence) -> SamplingRow:
        params = group.params
        banned = [] if seq.num_output_tokens >= params.min_tokens else \
            sorted(self.eos_token_ids | set(params.stop_token_ids))
        return SamplingRow(params, seq.token_ids, seq.num_prompt_tokens, group.generator, banned, seq.grammar_matcher)

    def _verify(self, logits: torch.Tensor, group: SequenceGroup, seq: Sequence, chunk: ScheduledChunk,
                row: int) -> None:
        """The row-`row` sample is appended; while it equals the next draft, that draft's K/V is good
        and its row samples the next token. Then roll back: only the last token and the accepted
        drafts count as computed, and blocks past the sequence's tokens go back."""
        drafts = chunk.draft_token_ids
        computed = chunk.start_pos + 1  # the last token's K/V
        accepted = 0
        while (accepted < len(drafts) and not seq.finished and len(seq.token_ids) == computed + accepted + 1
               and seq.token_ids[-1] == drafts[accepted]):
            accepted += 1
            # one row at a time: the state (grammar, penalties, min_tokens) includes the draft just accepted
            out = sample(logits[[row + accepted]], [self._sampling_row(group, seq)])
            self.processor.append(group, seq, out.token_ids[0], out.logprobs[0], out.top_logprobs[0])
        self.num_accepted += accepted
        if self.speculator is not None:
            self.speculator.record(group.spec, len(drafts), accepted)
        if not seq.finished:  # a finished sequence has given its blocks back already
            seq.num_computed_tokens = computed + accepted
            self.block_manager.mark_computed(seq)
            self.block_manager.trim(seq)

    def _sample(self, logits: torch.Tensor, rows: list[int], picks: list[tuple[SequenceGroup, Sequence]]) -> None:
        # rows repeated for a fork all start from the prompt, so the parent's matcher masks them
        sampling_rows = [self._sampling_row(group, seq) for group, seq in picks]
        try:
            out = sample(logits[rows], sampling_rows)
        except Exception:  # find the rows at fault: each alone, the others' draws unchanged
            out = self._sample_row_by_row(logits, rows, sampling_rows, picks)
        i = 0
        while i < len(picks):
            group, seq = picks[i]
            count = 1
            while i + count < len(picks) and picks[i + count][1] is seq:
                count += 1
            if group.request_id not in self.failed:
                self._guarded(group, self._append, group, seq, count, out, i)
            i += count

    def _append(self, group: SequenceGroup, seq: Sequence, count: int, out: SamplerOutput, first: int) -> None:
        seqs = [seq] if count == 1 else self.processor.fork(group, seq, count)
        group.forked = True
        for j, child in enumerate(seqs):
            k = first + j
            self.processor.append(group, child, out.token_ids[k], out.logprobs[k], out.top_logprobs[k])

    def _sample_row_by_row(self, logits, rows, sampling_rows, picks) -> SamplerOutput:
        token_ids, logprobs, top = [], [], []
        for row, sampling_row, (group, _) in zip(rows, sampling_rows, picks):
            try:
                one = sample(logits[[row]], [sampling_row])
            except Exception as exc:
                self.failed.setdefault(group.request_id, exc)
                one = SamplerOutput([0], [0.0], [None])  # a placeholder, never appended
            token_ids += one.token_ids
            logprobs += one.logprobs
            top += one.top_logprobs
        return SamplerOutput(token_ids, logprobs, top)


def _find(group: SequenceGroup, seq_id: int) -> Sequence:
    return next(s for s in group.seqs if s.seq_id == seq_id)


def _record_prompt_logprobs(group: SequenceGroup, logits: torch.Tensor, first_row: int, count: int) -> None:
    k = group.params.prompt_logprobs
    logprobs = torch.log_softmax(logits[first_row:first_row + count], dim=-1)
    if group.prompt_logprobs is None:
        group.prompt_logprobs = [None]
    start = len(group.prompt_logprobs)
    targets = torch.tensor(group.prompt_token_ids[start:start + count])
    chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
    top_vals, top_ids = logprobs.topk(max(k, 1), dim=-1)
    for j, target in enumerate(targets.tolist()):
        entry = {target: chosen[j]}
        entry.update({t: v for t, v in zip(top_ids[j, :k].tolist(), top_vals[j, :k].tolist()) if t not in entry})
        group.prompt_logprobs.append(entry)
