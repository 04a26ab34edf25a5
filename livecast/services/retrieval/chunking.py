"""Split a document's text into overlapping token windows, OpenAI's `chunking_strategy`.

`auto` is today's OpenAI default (800 tokens, 400 overlap); `static` sets both. Chunks are cut
at token boundaries of the embedding model's own tokenizer, and their text is sliced from the
original string (not decoded word pieces), so search results quote the document as written.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 100, 4096
DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP_TOKENS = 800, 400


@dataclass(slots=True, frozen=True)
class ChunkingStrategy:
    max_chunk_size_tokens: int = DEFAULT_CHUNK_TOKENS
    chunk_overlap_tokens: int = DEFAULT_OVERLAP_TOKENS
    kind: str = "auto"  # "auto" | "static": echoed back in the API

    def __post_init__(self) -> None:
        if self.kind not in ("auto", "static"):
            raise ValueError(f"chunking_strategy.type must be 'auto' or 'static', not {self.kind!r}")
        if not MIN_CHUNK_TOKENS <= self.max_chunk_size_tokens <= MAX_CHUNK_TOKENS:
            raise ValueError(f"chunking_strategy.static.max_chunk_size_tokens must be in "
                             f"{MIN_CHUNK_TOKENS}..{MAX_CHUNK_TOKENS}, not {self.max_chunk_size_tokens}")
        if not 0 <= self.chunk_overlap_tokens <= self.max_chunk_size_tokens // 2:
            raise ValueError("chunking_strategy.static.chunk_overlap_tokens must be between 0 and half of "
                             f"max_chunk_size_tokens ({self.max_chunk_size_tokens // 2}), "
                             f"not {self.chunk_overlap_tokens}")

    @classmethod
    def from_request(cls, value: dict | None) -> "ChunkingStrategy":
        """Parse `{"type": "auto"}` / `{"type": "static", "static": {...}}`; ValueError names the field."""
        if value is None:
            return cls()
        if not isinstance(value, dict):
            raise ValueError("chunking_strategy must be an object")
        kind = value.get("type", "auto")
        if kind == "auto":
            return cls()
        if kind != "static":
            raise ValueError(f"chunking_strategy.type must be 'auto' or 'static', not {kind!r}")
        static = value.get("static")
        if not isinstance(static, dict):
            raise ValueError("chunking_strategy.static is required when type is 'static'")
        size = static.get("max_chunk_size_tokens", DEFAULT_CHUNK_TOKENS)
        overlap = static.get("chunk_overlap_tokens", min(DEFAULT_OVERLAP_TOKENS, size // 2)
                             if isinstance(size, int) else DEFAULT_OVERLAP_TOKENS)
        if not isinstance(size, int) or not isinstance(overlap, int) or isinstance(size, bool):
            raise ValueError("chunking_strategy.static token counts must be integers")
        return cls(size, overlap, "static")

    def to_dict(self) -> dict:
        return {"type": "static", "static": {"max_chunk_size_tokens": self.max_chunk_size_tokens,
                                             "chunk_overlap_tokens": self.chunk_overlap_tokens}}


@dataclass(slots=True)
class Chunk:
    text: str
    token_ids: list[int]  # the embedding model's ids, without special tokens


def chunk_text(text: str, tokenize_with_offsets: Callable[[str], tuple[list[int], list[tuple[int, int]]]],
               strategy: ChunkingStrategy) -> list[Chunk]:
    """Windows of `max_chunk_size_tokens` tokens, each starting `size - overlap` after the last."""
    ids, offsets = tokenize_with_offsets(text)
    if not ids:
        return []
    size, stride = strategy.max_chunk_size_tokens, strategy.max_chunk_size_tokens - strategy.chunk_overlap_tokens
    chunks = []
    for start in range(0, len(ids), stride):
        stop = min(start + size, len(ids))
        chunks.append(Chunk(text[offsets[start][0]:offsets[stop - 1][1]], ids[start:stop]))
        if stop == len(ids):
            break
    return chunks


def embedding_windows(token_ids: list[int], window_tokens: int) -> list[list[int]]:
    """A chunk longer than the embedder's context, cut into windows it can read whole; the chunk's
    vector is their mean, so its end counts as much as its start (truncation would drop it)."""
    return [token_ids[i:i + window_tokens] for i in range(0, max(len(token_ids), 1), window_tokens)]
