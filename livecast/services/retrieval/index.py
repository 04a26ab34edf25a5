"""Hybrid search over the stored chunks: dense vectors (brute-force matmul) plus a lexical ranking
(BM25 by SQLite FTS5, or ts_rank_cd over a GIN-indexed tsvector on PostgreSQL), fused by
reciprocal rank fusion.

Both halves index the same rows of `chunks`, so a file's chunks appear and disappear from both in
one transaction. Dense vectors live in the database as float32 bytes and in memory as one matrix
per vector store, loaded on first search and dropped on every write to that store; each search
also compares the store's chunk count and last id with the matrix's, so chunks another replica of
the same database wrote are seen too (PostgreSQL never reuses an id). Brute force at
384 dimensions costs about 1 ms per query at 10k chunks, some 30 ms at 100k and 0.3 s at 1M on 2
busy cores (`livecast bench retrieval`): below ~100k chunks a store's scan costs less than
embedding the query, so an ANN index (faiss, sqlite-vec, pgvector) would only pay past that.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True, slots=True)
class _Lexical:
    """The lexical half on one database: how its index is built and how it ranks a query's terms."""
    column: str  # an extra column of `chunks`
    schema: tuple[str, ...]  # the index, after the table
    match: Callable[[list[str]], str]  # the terms as the engine's query text: a chunk matches any of them
    select: str  # chunk ids, best first; ? = match text, store id, {files} = the file filter, ? = limit


_LEXICAL = {
    "sqlite": _Lexical(
        "",
        # external-content FTS5: the text is stored once, in `chunks`; triggers keep the index in step
        ("""CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
            text, content='chunks', content_rowid='id', tokenize='porter unicode61')""",
         """CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text); END""",
         """CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text); END"""),
        lambda terms: " OR ".join('"' + t.replace('"', '""') + '"' for t in terms),
        "SELECT c.id FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? "
        "AND c.vector_store_id = ?{files} ORDER BY bm25(chunks_fts) LIMIT ?"),
    "postgresql": _Lexical(
        # stemmed like FTS5's porter tokenizer; the column follows `text`, no trigger needed
        ", lexemes TSVECTOR GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
        ("CREATE INDEX IF NOT EXISTS chunks_lexemes ON chunks USING GIN (lexemes)",),
        # each term quoted, so no query text is tsquery syntax; a term of several words is a phrase
        lambda terms: " | ".join("'" + t.replace("'", "''").replace("\\", "\\\\") + "'" for t in terms),
        # normalization 1: rank / (1 + log(length)), so long chunks do not win on length alone (BM25's role)
        "SELECT c.id FROM chunks c, to_tsquery('english', ?) q WHERE c.lexemes @@ q "
        "AND c.vector_store_id = ?{files} ORDER BY ts_rank_cd(c.lexemes, q, 1) DESC, c.id LIMIT ?"),
}


def schema(dialect) -> tuple[str, ...]:
    lexical = _LEXICAL[dialect.name]
    return (f"""CREATE TABLE IF NOT EXISTS chunks (
                id {dialect.auto_id}, vector_store_id TEXT NOT NULL, file_id TEXT NOT NULL,
                seq INTEGER NOT NULL, text TEXT NOT NULL, embedding {dialect.blob} NOT NULL{lexical.column})""",
            "CREATE INDEX IF NOT EXISTS chunks_by_file ON chunks (vector_store_id, file_id)",
            *lexical.schema)


RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion
MAX_QUERY_TERMS = 64


@dataclass(slots=True)
class _Matrix:
    chunk_ids: np.ndarray  # (n,) int64
    file_ids: np.ndarray  # (n,) object
    vectors: np.ndarray  # (n, dim) float32
    stamp: tuple  # (number of chunks, last chunk id) when loaded


@dataclass(slots=True)
class RankedChunk:
    chunk_id: int
    vector_store_id: str
    file_id: str
    score: float  # fused, in (0, 1]: 1 means first in every list
    text: str


class ChunkIndex:
    def __init__(self, db, dim: int) -> None:
        self.db, self.dim = db, dim
        self._lexical = _LEXICAL[db.dialect.name]
        db.apply(schema(db.dialect))
        self._matrices: dict[str, _Matrix] = {}
        self._generation: dict[str, int] = {}  # bumped by every write to a store
        self._lock = threading.Lock()

    # -- writes (inside the caller's transaction) -------------------------------------------------
    def add(self, vector_store_id: str, file_id: str, texts: list[str], vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (n, dim)
        assert vectors.shape == (len(texts), self.dim), vectors.shape
        self.db.executemany(
            "INSERT INTO chunks (vector_store_id, file_id, seq, text, embedding) VALUES (?, ?, ?, ?, ?)",
            [(vector_store_id, file_id, i, t, v.tobytes()) for i, (t, v) in enumerate(zip(texts, vectors))])
        self.forget(vector_store_id)

    def delete(self, vector_store_id: str, file_id: str | None = None) -> int:
        if file_id is None:
            n = self.db.execute("DELETE FROM chunks WHERE vector_store_id = ?", (vector_store_id,))
        else:
            n = self.db.execute("DELETE FROM chunks WHERE vector_store_id = ? AND file_id = ?",
                                (vector_store_id, file_id))
        self.forget(vector_store_id)
        return n

    def forget(self, vector_store_id: str) -> None:
        """Drop the in-memory matrix; the next search reloads it from the store."""
        with self._lock:
            self._matrices.pop(vector_store_id, None)
            self._generation[vector_store_id] = self._generation.get(vector_store_id, 0) + 1

    def count(self, vector_store_id: str, file_id: str | None = None) -> int:
        sql, params = "SELECT COUNT(*) AS n FROM chunks WHERE vector_store_id = ?", [vector_store_id]
        if file_id is not None:
            sql, params = sql + " AND file_id = ?", params + [file_id]
        return self.db.query_one(sql, params)["n"]

    # -- the two halves -----------------------------------------------------------------------------
    def _matrix(self, vector_store_id: str) -> _Matrix:
        with self._lock:
            matrix = self._matrices.get(vector_store_id)
            generation = self._generation.get(vector_store_id, 0)
        if matrix is not None:  # another process may have written since
            now = self.db.query_one("SELECT COUNT(*) AS n, MAX(id) AS last FROM chunks WHERE vector_store_id = ?",
                                    (vector_store_id,))
            matrix = matrix if matrix.stamp == (now["n"], now["last"]) else None
        if matrix is None:
            rows = self.db.query("SELECT id, file_id, embedding FROM chunks WHERE vector_store_id = ? ORDER BY id",
                                 (vector_store_id,))
            vectors = np.frombuffer(b"".join(r["embedding"] for r in rows), dtype=np.float32)
            matrix = _Matrix(np.array([r["id"] for r in rows], dtype=np.int64),
                             np.array([r["file_id"] for r in rows], dtype=object), vectors.reshape(len(rows), self.dim),
                             (len(rows), rows[-1]["id"] if rows else None))
            with self._lock:  # not if a write landed meanwhile: that matrix may predate it
                if self._generation.get(vector_store_id, 0) == generation:
                    self._matrices[vector_store_id] = matrix
        return matrix

    def dense(self, vector_store_id: str, query: np.ndarray, k: int, allowed: set[str] | None) -> list[int]:
        """Chunk ids by cosine similarity to `query` (a unit (dim,) vector), best first."""
        matrix = self._matrix(vector_store_id)
        scores = matrix.vectors @ query.astype(np.float32)  # (n,)
        if allowed is not None:
            scores = np.where(np.isin(matrix.file_ids, list(allowed)), scores, -np.inf)
        k = min(k, int(np.isfinite(scores).sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return matrix.chunk_ids[top].tolist()

    def lexical(self, vector_store_id: str, query: str, k: int, allowed: set[str] | None) -> list[int]:
        """Chunk ids by BM25 (or ts_rank_cd) over the query's words (any of them), best first."""
        terms = list(dict.fromkeys(re.findall(r"\w+", query.lower())))[:MAX_QUERY_TERMS]
        if not terms or (allowed is not None and not allowed):
            return []
        files, params = "", [self._lexical.match(terms), vector_store_id]
        if allowed is not None:
            files = f" AND c.file_id IN ({','.join('?' * len(allowed))})"
            params += sorted(allowed)
        rows = self.db.query(self._lexical.select.format(files=files), params + [k])
        return [r["id"] for r in rows]

    # -- fusion ---------------------------------------------------------------------------------------
    def search(self, vector_store_ids: list[str], queries: list[str], query_vectors: np.ndarray, k: int,
               allowed: dict[str, set[str]] | None = None, embedding_weight: float = 1.0,
               text_weight: float = 1.0, candidates: int | None = None) -> list[RankedChunk]:
        """The best `k` chunks over all stores and queries, by weighted reciprocal rank fusion of each
        query's dense and BM25 rankings; a weight of 0 turns that half off (for benchmarks)."""
        depth = candidates or max(50, 4 * k)
        fused: dict[int, float] = {}
        for store in vector_store_ids:
            permitted = None if allowed is None else allowed.get(store, set())
            for text, vector in zip(queries, query_vectors):
                lists = []
                if embedding_weight > 0:
                    lists.append((embedding_weight, self.dense(store, vector, depth, permitted)))
                if text_weight > 0:
                    lists.append((text_weight, self.lexical(store, text, depth, permitted)))
                for weight, ranked in lists:
                    for rank, chunk_id in enumerate(ranked):
                        fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (RRF_K + rank + 1)
        best = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        if not best:
            return []
        ceiling = len(queries) * (embedding_weight + text_weight) / (RRF_K + 1)
        rows = {r["id"]: r for r in self.db.query(
            f"SELECT id, vector_store_id, file_id, text FROM chunks WHERE id IN ({','.join('?' * len(best))})",
            [chunk_id for chunk_id, _ in best])}
        return [RankedChunk(cid, rows[cid]["vector_store_id"], rows[cid]["file_id"], min(1.0, score / ceiling),
                            rows[cid]["text"]) for cid, score in best if cid in rows]
