"""After the forward: append sampled tokens, fork n/best_of/beam sequences, detokenize, stop."""
from __future__ import annotations

import time

import torch

from livecast.engine.block_manager import BlockManager
from livecast.engine.detokenizer import Detokenizer
from livecast.engine.request_output import CompletionOutput, RequestMetrics, RequestOutput
from livecast.engine.sampling_params import BeamSearchParams, SamplingParams
from livecast.engine.sequence import Sequence, SequenceGroup, SequenceStatus


class OutputProcessor:
    def __init__(self, tokenizer, block_manager: BlockManager, eos_token_ids: set[int],
                 max_model_len: int, next_seq_id, jump_forward: bool = True) -> None:
        self.tokenizer = tokenizer
        self.jump_forward = jump_forward
        self.detokenizer = Detokenizer(tokenizer)
        self.block_manager = block_manager
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.next_seq_id = next_seq_id

    # -- sampled tokens ----------------------------------------------------------------------
    def fork(self, group: SequenceGroup, parent: Sequence, count: int) -> list[Sequence]:
        """Turn the prompt's one sequence into `count`, all sharing its blocks (copy-on-write)."""
        children = [parent]
        for _ in range(count - 1):
            child = parent.fork(self.next_seq_id())
            self.block_manager.fork(parent, child)
            if isinstance(group.params, SamplingParams) and group.params.grammar is not None:
                child.grammar_matcher = group.params.grammar()
            children.append(child)
        group.seqs = children
        group.forked = True
        return children

    def append(self, group: SequenceGroup, seq: Sequence, token_id: int, logprob: float,
               top_logprobs: dict[int, float] | None) -> None:
        matcher = seq.grammar_matcher
        if matcher is not None and not matcher.is_terminated():
            matcher.accept_token(token_id)
        self._extend(group, seq, token_id, logprob, top_logprobs)
        if matcher is not None and self.jump_forward and not seq.finished:
            self._jump_forward(group, seq)

    def _jump_forward(self, group: SequenceGroup, seq: Sequence) -> None:
        """Append the text the grammar forces next (a JSON key, a tool call's fixed frame) as
        tokens the model does not sample: the next step computes them all in one chunk instead of
        one decode step each. The forced string is tokenized on its own and its last token is left
        to the model, which may merge it with what follows. Requests that want logprobs or rank
        candidates by them (best_of > 1) decode token by token: forced tokens have no model
        log-probability."""
        params: SamplingParams = group.params
        if params.logprobs is not None or params.best_of > 1:
            return
        forced = seq.grammar_matcher.find_jump_forward_string()
        if not forced:
            return
        for token_id in self.tokenizer.encode(forced, add_special_tokens=False)[:-1]:
            if seq.finished or not seq.grammar_matcher.accept_token(token_id):
                return
            self._extend(group, seq, token_id, 0.0, None)

    def _extend(self, group: SequenceGroup, seq: Sequence, token_id: int, logprob: float,
                top_logprobs: dict[int, float] | None) -> None:
        """One more token on `seq` (its grammar already advanced): detokenize, check stops."""
        params: SamplingParams = group.params
        seq.append_token(token_id, logprob, top_logprobs)
        if group.first_token_time is None:
            group.first_token_time = time.monotonic()
        reason, stop_reason = self._token_stop(params, seq, token_id)
        old_len = len(seq.text)
        self.detokenizer.step(seq, params.skip_special_tokens, flush=reason is not None)
        if reason is None and params.stop and seq.num_output_tokens >= params.min_tokens:
            start = max(0, old_len - params.max_stop_len + 1)
            for stop in params.stop:
                index = seq.text.find(stop, start)
                if index != -1:
                    seq.text = seq.text[:index + (len(stop) if params.include_stop_str_in_output else 0)]
                    reason, stop_reason = "stop", stop
                    break
        if reason is not None:
            self.finish(seq, reason, stop_reason)

    def _token_stop(self, params: SamplingParams, seq: Sequence, token_id: int):
        if seq.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token_id in self.eos_token_ids:
                return "stop", None
            if token_id in params.stop_token_ids:
                return "stop", token_id
            if seq.grammar_matcher is not None and seq.grammar_matcher.is_terminated():
                return "stop", None
        if params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            return "length", None
        if len(seq.token_ids) >= self.max_model_len:
            return "length", None
        return None, None

    def finish(self, seq: Sequence, reason: str, stop_reason=None) -> None:
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason
        self.block_manager.free(seq)

    # -- beam search ---------------------------------------------------------------------------
    def beam_step(self, group: SequenceGroup, beams: list[Sequence], logprobs: torch.Tensor) -> None:
        """One beam-search step over all live beams: logprobs (num_beams, vocab), raw log-softmax."""
        params: BeamSearchParams = group.params
        width, vocab = params.beam_width, logprobs.shape[-1]
        scores = torch.tensor([b.cumulative_logprob for b in beams])[:, None] + logprobs.float().cpu()
        values, flat = scores.flatten().topk(min(2 * width, scores.numel()))
        new_beams: list[tuple[Sequence, int, float]] = []
        for rank, (value, index) in enumerate(zip(values.tolist(), flat.tolist())):
            parent, token = beams[index // vocab], index % vocab
            if token in self.eos_token_ids and not params.ignore_eos:
                if rank < width:
                    done = parent.fork(self.next_seq_id())
                    done.append_token(token, value - parent.cumulative_logprob, None)
                    done.cumulative_logprob = value
                    done.status, done.finish_reason = SequenceStatus.FINISHED, "stop"
                    group.finished_beams.append((self._beam_score(done, params), done))
                continue
            new_beams.append((parent, token, value))
            if len(new_beams) == width:
                break
        children = []
        for parent, token, value in new_beams:
            child = parent.fork(self.next_seq_id())
            self.block_manager.fork(parent, child)
            child.append_token(token, value - parent.cumulative_logprob, None)
            child.cumulative_logprob = value
            children.append(child)
        for beam in beams:
            self.block_manager.free(beam)
        group.seqs = children
        length_done = children and children[0].num_output_tokens >= params.max_tokens
        if length_done or not children or self._beams_done(group, children, params):
            for child in children:
                self.finish(child, "length" if length_done else "stop")
            ranked = sorted(group.finished_beams + [(self._beam_score(c, params), c) for c in children],
                            key=lambda item: item[0], reverse=True)[:width]
            group.seqs = [seq for _, seq in ranked]
            for seq in group.seqs:
                seq.text = self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=True)
                seq.status = SequenceStatus.FINISHED

    @staticmethod
    def _beam_score(seq: Sequence, params: BeamSearchParams) -> float:
        return seq.cumulative_logprob / (len(seq.token_ids) ** params.length_penalty)

    def _beams_done(self, group, children, params) -> bool:
        if len(group.finished_beams) < params.beam_width:
            return False
        worst = min(score for score, _ in group.finished_beams)
        best_running = max(c.cumulative_logprob for c in children) / (len(children[0].token_ids) ** params.length_penalty)
        return worst >= best_running

    # -- outputs -----------------------------------------------------------------------------
    def make_output(self, group: SequenceGroup) -> RequestOutput | None:
        params = group.params
        finished = group.finished
        if group.is_beam or params.best_of > params.n:
            if not finished:
                return None  # the ranking is only known at the end
            seqs = group.seqs if group.is_beam else sorted(
                group.seqs, key=lambda s: s.cumulative_logprob, reverse=True)[:params.n]
        else:
            seqs = group.seqs
        holdback = 0 if group.is_beam else max(params.max_stop_len - 1, 0)
        outputs = []
        for index, seq in enumerate(seqs):
            text = seq.text
            if holdback and not seq.finished:
                text = text[:max(0, len(text) - holdback)]
            want_logprobs = not group.is_beam and params.logprobs is not None
            outputs.append(CompletionOutput(
                index=index, text=text, token_ids=seq.output_token_ids,
                cumulative_logprob=seq.cumulative_logprob,
                logprobs=list(seq.output_logprobs) if want_logprobs else None,
                finish_reason=seq.finish_reason, stop_reason=seq.stop_reason))
        metrics = RequestMetrics(group.arrival_time, group.first_token_time,
                                 time.monotonic() if finished else None, group.num_preemptions)
        return RequestOutput(group.request_id, group.prompt, group.prompt_token_ids, outputs, finished,
                             group.prompt_logprobs, metrics)
