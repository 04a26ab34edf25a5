"""Prompt lookup (vLLM's `ngram`, llama.cpp's prompt lookup decoding): no draft model. The last n
tokens are searched for earlier in the request (prompt and output), longest n first, and the tokens
that followed their most recent earlier occurrence are the proposal. Quoting, code edits, and
summaries that copy from the prompt accept long runs of them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class NgramProposer:
    max_n: int = 4
    min_n: int = 1
    max_lookback: int = 8192  # tokens searched at most: the scan is Python, once per decode step

    def __post_init__(self) -> None:
        if not 1 <= self.min_n <= self.max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {self.min_n}, {self.max_n}")

    def propose(self, token_ids: list[int], k: int, state=None) -> list[int]:
        length = len(token_ids)
        if k <= 0 or length < 2:
            return []
        lo = max(0, length - self.max_lookback)
        last = token_ids[-1]
        # ends[n]: the end (exclusive) of the most recent earlier occurrence of the last n tokens
        ends: dict[int, int] = {}
        for end in range(length - 1, lo, -1):  # candidate occurrences end before the sequence does
            if token_ids[end - 1] != last:
                continue
            n = 1
            while (n < self.max_n and end - n - 1 >= lo
                   and token_ids[end - n - 1] == token_ids[length - n - 1]):
                n += 1
            for m in range(n, self.min_n - 1, -1):
                if m in ends:
                    break
                ends[m] = end
            if self.max_n in ends:
                break
        for n in range(self.max_n, self.min_n - 1, -1):
            if n in ends:
                return token_ids[ends[n]:ends[n] + k]
        return []

    def request_finished(self, prompt_token_ids: list[int], output_token_ids: list[int]) -> None:
        pass  # each request is its own lookup table
