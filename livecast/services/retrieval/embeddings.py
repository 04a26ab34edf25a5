"""Embedding requests from many callers (HTTP, ingestion, search) batched into few model calls.

The batcher is device work like an LLM step: the shared device runtime drives it through the
interface of livecast.driven, or, with no runtime, `start()` runs it on its own thread. Callers get a `concurrent.futures.Future`; nothing here runs on the event loop. The queue
is bounded in inputs: a caller that would overflow it gets a 503 at once instead of a slow wait.
"""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from livecast.driven import Driven, Load
from livecast.services.errors import APIError, overloaded


@dataclass(slots=True)
class EmbeddingResult:
    vectors: np.ndarray  # (n, dim) float32, unit rows
    num_tokens: int  # tokens the model read, special tokens included


@dataclass(slots=True)
class _Pending:
    future: Future
    inputs: list  # strings, or token-id lists
    vectors: list = field(default_factory=list)  # (k, dim) arrays done so far, in order
    done: int = 0
    num_tokens: int = 0


class EmbeddingBatcher(Driven):
    thread_name = "embedding-batcher"

    def __init__(self, embedder, max_batch_inputs: int = 64, max_queued_inputs: int = 8192,
                 retry_after_s: int = 1) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s
        if max_batch_inputs < 1 or max_queued_inputs < max_batch_inputs:
            raise ValueError("need 1 <= max_batch_inputs <= max_queued_inputs")
        self.embedder = embedder
        self.dim = embedder.dim
        self.max_batch_inputs, self.max_queued_inputs = max_batch_inputs, max_queued_inputs
        self._queue: deque[_Pending] = deque()
        self._queued_inputs = 0
        self._lock = threading.Lock()

    # -- callers ---------------------------------------------------------------------------------
    def submit(self, inputs: list[str] | list[list[int]]) -> Future:
        """Embed `inputs` (all strings or all token-id lists); the future holds an EmbeddingResult."""
        inputs = list(inputs)
        if not inputs:
            raise ValueError("input must not be empty")
        if len(inputs) > self.max_queued_inputs:
            raise ValueError(f"input has {len(inputs)} items; at most {self.max_queued_inputs} per request")
        if not isinstance(inputs[0], str):
            self._check_ids(inputs)
        pending = _Pending(Future(), inputs)
        with self._lock:
            if self._queued_inputs + len(inputs) > self.max_queued_inputs:
                raise overloaded(f"the embedding queue is full ({self._queued_inputs} inputs waiting); "
                                 "retry shortly", self.retry_after_s, code="queue_full")
            self._queue.append(pending)
            self._queued_inputs += len(inputs)
        self.wake()
        return pending.future

    def _check_ids(self, rows: list) -> None:
        for row in rows:
            if not isinstance(row, list) or not all(isinstance(t, int) for t in row):
                raise ValueError("input must be all strings or all lists of token ids")
            if not row:
                raise ValueError("input must not contain an empty token list")
            bad = next((t for t in row if not 0 <= t < self.embedder.vocab_size), None)
            if bad is not None:
                raise ValueError(f"token id {bad} is outside the embedding model's vocabulary "
                                 f"(0..{self.embedder.vocab_size - 1})")

    # -- the device side ---------------------------------------------------------------------------
    def load(self) -> Load:
        return Load(waiting=bool(self._queue))

    def step(self, token_budget: int | None = None) -> int:
        """Embed up to `max_batch_inputs` queued inputs in one model call; returns how many."""
        with self._lock:
            taken: list[tuple[_Pending, int, int]] = []  # (request, start, stop)
            room = self.max_batch_inputs
            for pending in self._queue:
                if room == 0:
                    break
                count = min(room, len(pending.inputs) - pending.done)
                taken.append((pending, pending.done, pending.done + count))
                pending.done += count
                room -= count
        if not taken:
            return 0
        try:
            ids, tokens = [], []  # model inputs; tokens each request's piece adds to its usage
            for pending, start, stop in taken:
                piece = pending.inputs[start:stop]
                rows = self.embedder.input_ids(piece) if isinstance(piece[0], str) else piece
                ids.extend(rows)
                # pre-tokenized rows get [CLS]/[SEP] added and are cut like text
                extra = 0 if isinstance(piece[0], str) else 2
                tokens.append(sum(min(len(r) + extra, self.embedder.max_seq_length) for r in rows))
            vectors = self.embedder.encode_ids(ids).numpy()  # (sum of counts, dim)
            error = None
        except Exception as exc:  # a model failure fails the requests it touched, not the loop
            error = exc
        offset = 0
        finished: list[_Pending] = []
        with self._lock:
            for (pending, start, stop), num_tokens in zip(taken, tokens if error is None else [0] * len(taken)):
                if error is None:
                    pending.vectors.append(vectors[offset:offset + stop - start])
                    pending.num_tokens += num_tokens
                    offset += stop - start
                if error is not None or pending.done == len(pending.inputs):
                    if pending in self._queue:
                        self._queue.remove(pending)
                        self._queued_inputs -= len(pending.inputs)
                    finished.append(pending)
        for pending in finished:
            if pending.future.done():
                continue
            if error is not None:
                pending.future.set_exception(error)
            else:
                pending.future.set_result(EmbeddingResult(np.concatenate(pending.vectors), pending.num_tokens))
        return sum(stop - start for _, start, stop in taken)

    def cancel_all(self) -> None:
        """Fail whatever is queued: it will never run, so say so instead of hanging callers."""
        with self._lock:
            left, self._queue, self._queued_inputs = list(self._queue), deque(), 0
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(APIError(503, "the embedding service is shutting down"))

    def stop(self) -> None:
        """Stop the own thread (if any) and fail what is still queued."""
        self.stop_thread()
        self.cancel_all()
