"""Which sequences speculate this step and how far: each request's draft length follows its own
acceptance, and a large batch (compute-bound: a verified draft costs as much as a new token) does
not speculate at all."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from livecast.engine.spec.proposer import Proposer

logger = logging.getLogger("livecast.engine")


@dataclass(slots=True)
class SpecState:
    """One request's speculation: an EMA of the fraction of its drafts accepted, and a pause."""

    acceptance: float = 1.0  # optimistic start: a new request tries the full k
    paused_steps: int = 0  # decode steps left without proposing after drafts kept failing
    proposer_state: Any = None  # the proposer's own, between this request's steps (suffix: its tree)


@dataclass(slots=True)
class Speculator:
    proposer: Proposer
    num_speculative_tokens: int = 4
    max_batch: int = 8  # more running sequences than this: no speculation this step
    ema_weight: float = 0.3
    pause_below: float = 0.1  # acceptance under which a request stops proposing for a while
    pause_steps: int = 16
    # counters since start, for EngineStats
    num_verify_steps: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_proposer_errors: int = 0

    def num_drafts(self, state: SpecState) -> int:
        """This request's k: the full k at acceptance >= 0.8, shrinking with it, at least 1
        while it has not paused. A paused request counts down a step and proposes nothing."""
        if state.paused_steps > 0:
            state.paused_steps -= 1
            return 0
        return max(1, min(self.num_speculative_tokens, round(self.num_speculative_tokens * state.acceptance / 0.8)))

    def propose_many(self, requests: list[tuple[SpecState, list[int], int]]) -> list[list[int]]:
        """Drafts for each (state, token_ids, max_k) of a step, at most the request's own k (and
        none while it is paused), in one call where the proposer batches them (`propose_many`: a
        draft model's forward serves every sequence)."""
        ks = [min(self.num_drafts(state), max_k) for state, _, max_k in requests]
        asks = [(state, token_ids, k) for (state, token_ids, _), k in zip(requests, ks) if k > 0]
        batched = getattr(self.proposer, "propose_many", None)
        try:
            drafts = iter(batched(asks) if batched is not None and asks else
                          [self.proposer.propose(token_ids, k, state) for state, token_ids, k in asks])
        except Exception:  # a proposer's failure (a draft model's forward) costs drafts, never the step
            logger.exception("the speculative proposer failed; this step drafts nothing")
            self.num_proposer_errors += 1
            for state, _, _ in asks:
                self.release(state)  # a draft model rebuilds what it kept from the target's tokens
            return [[] for _ in ks]
        return [next(drafts) if k > 0 else [] for k in ks]

    def release(self, state: SpecState | None) -> None:
        """The request finished, was aborted or preempted: the proposer drops what it kept for it
        (a draft model: its KV blocks). Optional for a proposer, as `request_finished` is."""
        hook = getattr(self.proposer, "release", None)
        if state is not None and hook is not None:
            hook(state)

    def request_finished(self, prompt_token_ids: list[int], output_token_ids: list[int]) -> None:
        hook = getattr(self.proposer, "request_finished", None)  # optional: a proposer may learn nothing
        if hook is not None:
            hook(prompt_token_ids, output_token_ids)

    def record(self, state: SpecState, num_drafts: int, num_accepted: int) -> None:
        """One verification: `num_accepted` of `num_drafts` proposed tokens were the target's."""
        self.num_verify_steps += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted_tokens += num_accepted
        state.acceptance += self.ema_weight * (num_accepted / num_drafts - state.acceptance)
        if state.acceptance < self.pause_below:
            # try again later from a modest start, so a request that turns repetitive gets k back
            state.paused_steps, state.acceptance = self.pause_steps, 0.4
