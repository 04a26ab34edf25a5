"""Background ingestion: parse → chunk → embed → commit, for files waiting `in_progress`.

The work queue is the `vector_store_files` table itself (rows still `in_progress`), so it is
bounded by nothing in memory and survives a restart: files a crash interrupted are picked up
again at start. A fixed number of workers bounds concurrency. Each file ends in one transaction
that writes all its chunks and `completed`, or `failed` with `last_error` and no chunks; a file
cancelled or removed meanwhile is dropped at that point.
"""
from __future__ import annotations

import asyncio
import json
import logging

import numpy as np

from livecast.services.errors import APIError
from livecast.services.retrieval.chunking import (
    ChunkingStrategy,
    chunk_text,
    embedding_windows,
)
from livecast.services.retrieval.parsers import ParseError, extract_text

logger = logging.getLogger("livecast.retrieval")

EMBED_PIECE = 64  # windows per embedding request: other callers' requests interleave with a big file


class Ingestor:
    def __init__(self, db, files, index, batcher, embedder, concurrency: int) -> None:
        self.db, self.files, self.index, self.batcher, self.embedder = db, files, index, batcher, embedder
        self.concurrency = concurrency
        self._active: set[tuple[str, str]] = set()
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task] = []

    def start(self) -> None:
        self._wakeup.set()  # rows left in_progress by a previous run
        self._workers = [asyncio.create_task(self._work(), name=f"ingest-{i}") for i in range(self.concurrency)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def enqueue(self, store_id: str, file_id: str) -> None:
        """A row is waiting; safe from any thread of the event loop's own."""
        self._wakeup.set()

    async def idle(self) -> None:
        """Until nothing is waiting or running (tests and benchmarks)."""
        while self._active or self._next() is not None:
            await asyncio.sleep(0.02)

    def _next(self) -> tuple[str, str] | None:
        # oldest first; the key breaks ties within a second (the table has no rowid on PostgreSQL)
        rows = self.db.query("SELECT vector_store_id, file_id FROM vector_store_files WHERE status = 'in_progress' "
                             "ORDER BY created_at, vector_store_id, file_id LIMIT ?", (len(self._active) + 1,))
        return next(((r["vector_store_id"], r["file_id"]) for r in rows
                     if (r["vector_store_id"], r["file_id"]) not in self._active), None)

    async def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._active.add(job)
            try:
                await self._ingest(*job)
            finally:
                self._active.discard(job)

    async def _ingest(self, store_id: str, file_id: str) -> None:
        try:
            row = self.db.query_one("SELECT chunking_strategy FROM vector_store_files WHERE vector_store_id = ? "
                                    "AND file_id = ?", (store_id, file_id))
            if row is None:
                return
            static = json.loads(row["chunking_strategy"])["static"]
            strategy = ChunkingStrategy(static["max_chunk_size_tokens"], static["chunk_overlap_tokens"], "static")
            meta = await asyncio.to_thread(self.files.get, file_id)
            data = await asyncio.to_thread(self.files.read, file_id)
            text = await asyncio.to_thread(extract_text, meta["filename"], data)
            chunks = await asyncio.to_thread(chunk_text, text, self.embedder.tokenize_with_offsets, strategy)
            if not chunks:
                raise ParseError(f"{meta['filename']} has no text the tokenizer can read")
            vectors = await self._embed([c.token_ids for c in chunks])
            await asyncio.to_thread(self._complete, store_id, file_id, [c.text for c in chunks], vectors)
        except asyncio.CancelledError:
            raise  # shutting down: the row stays in_progress and is resumed at the next start
        except ParseError as exc:
            code = "unsupported_file" if "unsupported file type" in str(exc) else "invalid_file"
            await asyncio.to_thread(self._fail, store_id, file_id, code, str(exc))
        except APIError as exc:  # the file vanished from the Files API before it was read
            await asyncio.to_thread(self._fail, store_id, file_id, "invalid_file", exc.message)
        except Exception as exc:
            logger.exception("ingesting %s into %s failed", file_id, store_id)
            await asyncio.to_thread(self._fail, store_id, file_id, "server_error", f"{type(exc).__name__}: {exc}")

    async def _embed(self, chunk_ids: list[list[int]]) -> np.ndarray:
        """One unit vector per chunk: the mean of its windows' vectors, renormalised."""
        window = self.embedder.max_seq_length - 2
        windows, owner = [], []
        for i, ids in enumerate(chunk_ids):
            for piece in embedding_windows(ids, window):
                windows.append(piece)
                owner.append(i)
        parts = []
        for start in range(0, len(windows), EMBED_PIECE):
            while True:
                try:
                    future = self.batcher.submit(windows[start:start + EMBED_PIECE])
                    break
                except APIError as exc:
                    if exc.code != "queue_full":
                        raise
                    await asyncio.sleep(0.05)  # ingestion yields to interactive callers
            parts.append((await asyncio.wrap_future(future)).vectors)
        window_vectors = np.concatenate(parts)  # (num_windows, dim)
        sums = np.zeros((len(chunk_ids), window_vectors.shape[1]), dtype=np.float32)
        np.add.at(sums, np.array(owner), window_vectors)
        return sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(min=1e-12)

    def _complete(self, store_id: str, file_id: str, texts: list[str], vectors: np.ndarray) -> None:
        usage = sum(len(t.encode()) for t in texts) + vectors.nbytes
        with self.db.transaction():
            if not self._still_wanted(store_id, file_id):
                return
            self.index.delete(store_id, file_id)
            self.index.add(store_id, file_id, texts, vectors)
            self.db.execute("UPDATE vector_store_files SET status = 'completed', last_error = NULL, usage_bytes = ? "
                            "WHERE vector_store_id = ? AND file_id = ?", (usage, store_id, file_id))

    def _fail(self, store_id: str, file_id: str, code: str, message: str) -> None:
        with self.db.transaction():
            if not self._still_wanted(store_id, file_id):
                return
            self.index.delete(store_id, file_id)
            self.db.execute("UPDATE vector_store_files SET status = 'failed', last_error = ? "
                            "WHERE vector_store_id = ? AND file_id = ?",
                            (json.dumps({"code": code, "message": message}), store_id, file_id))

    def _still_wanted(self, store_id: str, file_id: str) -> bool:
        row = self.db.query_one("SELECT status FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
                                (store_id, file_id))
        return row is not None and row["status"] == "in_progress"
