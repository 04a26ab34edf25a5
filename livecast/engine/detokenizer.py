"""Incremental detokenization: text deltas that never split a multi-byte character."""
from __future__ import annotations

from livecast.engine.sequence import Sequence

# tokens of prompt context decoded with the first outputs, so leading-space rules apply as in
# a full decode
_CONTEXT_TOKENS = 5


class Detokenizer:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def start(self, seq: Sequence) -> None:
        seq.prefix_offset = max(0, seq.num_prompt_tokens - _CONTEXT_TOKENS)
        seq.read_offset = seq.num_prompt_tokens

    def _decode(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def step(self, seq: Sequence, skip_special_tokens: bool, flush: bool = False) -> str:
        """Append the text of newly sampled tokens to `seq.text` and return it.

        Text ending in U+FFFD (an incomplete UTF-8 sequence) is held back until the next token
        completes it, unless `flush` (the sequence finished) forces it out.
        """
        ids = seq.token_ids
        if seq.read_offset >= len(ids):
            return ""
        prefix = self._decode(ids[seq.prefix_offset:seq.read_offset], skip_special_tokens)
        full = self._decode(ids[seq.prefix_offset:], skip_special_tokens)
        if len(full) <= len(prefix) or (full.endswith("\ufffd") and not flush):
            if flush:
                seq.read_offset = len(ids)
            return ""
        delta = full[len(prefix):]
        seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)
        seq.text += delta
        return delta
