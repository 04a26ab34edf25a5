"""The proposer interface: a cheap guess at a sequence's next tokens, from its tokens alone."""
from __future__ import annotations

from typing import Protocol


class Proposer(Protocol):
    def propose(self, token_ids: list[int], k: int) -> list[int]:
        """Up to `k` tokens that may follow `token_ids` (prompt + output); [] when there is no guess."""
        ...


def make_proposer(name: str) -> Proposer:
    if name == "ngram":
        from livecast.engine.spec.ngram import NgramProposer
        return NgramProposer()
    raise ValueError(f"speculative must be 'ngram', got {name!r}")
