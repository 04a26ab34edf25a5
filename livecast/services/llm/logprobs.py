"""Log-probabilities in OpenAI's two shapes (chat's `content` list, completions' parallel lists).

Engine entries are `{token_id: logprob}` dicts with the sampled (or prompt) token first, then
the top-k; a token's text and raw bytes are decoded once per id.
"""
from __future__ import annotations

import functools

_FLOOR = -9999.0  # JSON has no -inf


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte → printable-unicode map used by byte-level BPE vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class TokenTexts:
    def __init__(self, tokenizer, cache_size: int = 1 << 16) -> None:
        self.tokenizer = tokenizer
        self.lookup = functools.lru_cache(maxsize=cache_size)(self._lookup)

    def _lookup(self, token_id: int) -> tuple[str, list[int]]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        decoder = _byte_decoder()
        if piece and all(c in decoder for c in piece):
            raw = bytes(decoder[c] for c in piece)
            return raw.decode("utf-8", errors="replace"), list(raw)
        text = self.tokenizer.decode([token_id])
        return text, list(text.encode("utf-8"))

    def text(self, token_id: int) -> str:
        return self.lookup(token_id)[0]

    # -- chat ------------------------------------------------------------------------------------
    def chat(self, entries: list[dict[int, float]], top_k: int) -> list[dict]:
        out = []
        for entry in entries:
            token_id, logprob = next(iter(entry.items()))
            top = sorted(entry.items(), key=lambda item: item[1], reverse=True)[:top_k]
            out.append({**self._chat_item(token_id, logprob),
                        "top_logprobs": [self._chat_item(t, v) for t, v in top]})
        return out

    def _chat_item(self, token_id: int, logprob: float) -> dict:
        text, raw = self.lookup(token_id)
        return {"token": text, "logprob": max(logprob, _FLOOR), "bytes": raw}

    # -- completions -------------------------------------------------------------------------------
    def completion(self, token_ids: list[int], entries: list[dict[int, float] | None], top_k: int,
                   text_offset: int) -> dict:
        """Legacy `logprobs` for these tokens; `text_offset` is where the first one starts in the text.
        An entry of None (the first prompt token, which nothing scores) gives nulls."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for token_id, entry in zip(token_ids, entries):
            text = self.text(token_id)
            tokens.append(text)
            offsets.append(text_offset)
            text_offset += len(text)
            if entry is None:
                token_logprobs.append(None)
                top_logprobs.append(None)
                continue
            token_logprobs.append(max(entry.get(token_id, next(iter(entry.values()))), _FLOOR))
            top = sorted(entry.items(), key=lambda item: item[1], reverse=True)[:top_k]
            top_logprobs.append({self.text(t): max(v, _FLOOR) for t, v in top})
        return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
                "text_offset": offsets}
