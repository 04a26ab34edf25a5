"""The proposer interface: a cheap guess at a sequence's next tokens, from its tokens and what the
proposer has learnt from earlier requests."""
from __future__ import annotations

from typing import Any, Protocol


class Proposer(Protocol):
    def propose(self, token_ids: list[int], k: int, state: Any = None) -> list[int]:
        """Up to `k` tokens that may follow `token_ids` (prompt + output); [] when there is no guess.
        `state` is the request's SpecState: its `proposer_state` is the proposer's to keep between
        the request's steps (it goes with the request, finished or aborted)."""
        ...

    def request_finished(self, prompt_token_ids: list[int], output_token_ids: list[int]) -> None:
        """Optional (the Speculator calls it where present): a request finished with this output
        (every finished sampling request, speculating or not)."""
        ...

    # Optional as well: `propose_many(requests: list[(state, token_ids, k)]) -> list[list[int]]`
    # drafts for every speculating sequence of a step at once (a draft model batches its forward),
    # and `release(state)` drops what the proposer keeps for a request that finished, was aborted
    # or preempted (a draft model's KV blocks).


def make_proposer(name: str, engine: Any = None) -> Proposer:
    """`engine`: the LLMEngine being built (its config, device, backend, tokenizer, KV cache), which
    the draft proposer loads its model beside."""
    if name == "ngram":
        from livecast.engine.spec.ngram import NgramProposer
        return NgramProposer()
    if name == "suffix":
        from livecast.engine.spec.suffix import SuffixProposer
        return SuffixProposer()
    if name == "draft":
        if engine is None:
            raise ValueError("the draft proposer loads a model beside the engine: make_proposer('draft', engine)")
        from livecast.engine.spec.draft import DraftProposer
        return DraftProposer.from_engine(engine)
    raise ValueError(f"speculative must be 'ngram', 'suffix' or 'draft', got {name!r}")
