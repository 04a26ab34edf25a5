"""The retrieval service: Files, embeddings, vector stores and search, built once in the lifespan.

`retrieval_service(config, db)` loads the embedding model on a worker thread, builds every part
and yields a `RetrievalService`; routes reach it as `request.app.state.retrieval`, seen through
`for_project` (deps.get_retrieval): other projects' files and vector stores are not there. The
run loop's `file_search` tool calls `await service.search(vector_store_ids, query,
max_num_results, filters, score_threshold)` on its project's view and gets `SearchHit`s back.
"""
from __future__ import annotations

import asyncio
import copy
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from livecast.services.errors import APIError
from livecast.services.retrieval.config import RetrievalConfig
from livecast.services.retrieval.embeddings import EmbeddingBatcher, EmbeddingResult
from livecast.services.retrieval.file_store import FileStore
from livecast.services.retrieval.filters import matches, validate_filter
from livecast.services.retrieval.index import ChunkIndex
from livecast.services.retrieval.ingest import Ingestor
from livecast.services.retrieval.vector_stores import VectorStores
from livecast.services.runtime.threads import on_own_thread

logger = logging.getLogger("livecast.retrieval")
MAX_SEARCH_RESULTS = 50
MAX_SEARCH_QUERIES = 16  # counts capped before any embedding or SQL is built for them
MAX_SEARCH_STORES = 16


@dataclass(slots=True)
class SearchHit:
    file_id: str
    filename: str
    score: float  # in (0, 1], fused rank score
    attributes: dict
    text: str
    vector_store_id: str


class RetrievalService:
    def __init__(self, config: RetrievalConfig, db, embedder, retry_after_s: int = 1) -> None:
        self.config, self.db, self.embedder = config, db, embedder
        self.files = FileStore(db, config.data_dir, config.max_file_bytes)
        self.batcher = self.index = self.ingestor = None
        if embedder is not None:
            self.batcher = EmbeddingBatcher(embedder, config.max_batch_inputs, config.max_queued_inputs, retry_after_s)
            self.index = ChunkIndex(db, embedder.dim)
            self.ingestor = Ingestor(db, self.files, self.index, self.batcher, embedder, config.ingestion_concurrency)
        self.vector_stores = VectorStores(db, self.files, self.index, self._enqueue)
        model = config.embedding_model
        self.embedding_model_name = "all-MiniLM-L6-v2" if model is None else Path(str(model)).name

    def for_project(self, project: str) -> "RetrievalService":
        """This service as `project` sees it: the same model, batcher and ingestion; only that
        project's files and vector stores (to read, search, add to or delete)."""
        view = copy.copy(self)
        view.files, view.vector_stores = self.files.scoped(project), self.vector_stores.scoped(project)
        return view

    def _enqueue(self, store_id: str, file_id: str) -> None:
        self.require_embedder()
        self.ingestor.enqueue(store_id, file_id)

    def require_embedder(self) -> None:
        if self.embedder is None:
            raise APIError(503, "embeddings are off on this server (--embedding-model none); vector stores "
                           "and embeddings need an embedding model", code="embeddings_disabled")

    async def embed(self, inputs: list[str] | list[list[int]]) -> EmbeddingResult:
        self.require_embedder()
        try:
            future = self.batcher.submit(inputs)
        except ValueError as exc:
            raise APIError(400, str(exc), param="input") from None
        return await asyncio.wrap_future(future)

    def delete_file(self, file_id: str) -> None:
        """Delete a file and take it out of every vector store (OpenAI's semantics)."""
        self.files.get(file_id)
        with self.db.transaction():
            for store_id in self.vector_stores.stores_holding(file_id):
                if self.index is not None:
                    self.index.delete(store_id, file_id)
                self.db.execute("DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
                                (store_id, file_id))
            self.files.delete(file_id)

    async def search(self, vector_store_ids: list[str], query: str | list[str], max_num_results: int = 10,
                     filters: dict | None = None, score_threshold: float = 0.0, *, embedding_weight: float = 1.0,
                     text_weight: float = 1.0) -> list[SearchHit]:
        """Hybrid search over completed files of the stores, best first; 4xx APIError on bad input."""
        self.require_embedder()
        queries = [query] if isinstance(query, str) else list(query)
        if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
            raise APIError(400, "query must be a non-empty string or list of non-empty strings", param="query")
        if len(queries) > MAX_SEARCH_QUERIES:
            raise APIError(400, f"at most {MAX_SEARCH_QUERIES} queries per search, got {len(queries)}", param="query")
        if not vector_store_ids or len(vector_store_ids) > MAX_SEARCH_STORES:
            raise APIError(400, f"vector_store_ids must name 1..{MAX_SEARCH_STORES} stores, got {len(vector_store_ids)}",
                           param="vector_store_ids")
        if not 1 <= max_num_results <= MAX_SEARCH_RESULTS:
            raise APIError(400, f"max_num_results must be in 1..{MAX_SEARCH_RESULTS}", param="max_num_results")
        if not 0.0 <= score_threshold <= 1.0:
            raise APIError(400, "ranking_options.score_threshold must be in 0..1",
                           param="ranking_options.score_threshold")
        if filters is not None:
            try:
                validate_filter(filters)
            except ValueError as exc:
                raise APIError(400, str(exc), param="filters") from None
        for store_id in vector_store_ids:
            self.vector_stores.touch(store_id)
        attributes = {(r["vector_store_id"], r["file_id"]): json.loads(r["attributes"]) for r in self.db.query(
            f"SELECT vector_store_id, file_id, attributes FROM vector_store_files WHERE status = 'completed' AND "
            f"vector_store_id IN ({','.join('?' * len(vector_store_ids))})", list(vector_store_ids))}
        allowed = None
        if filters is not None:
            allowed = {}
            for (store_id, file_id), attrs in attributes.items():
                if matches(filters, attrs):
                    allowed.setdefault(store_id, set()).add(file_id)
        query_vectors = (await self.embed(queries)).vectors
        ranked = await asyncio.to_thread(self.index.search, list(vector_store_ids), queries, query_vectors,
                                         max_num_results, allowed, embedding_weight, text_weight)
        names = {r["id"]: r["filename"] for r in self.db.query(
            f"SELECT id, filename FROM files WHERE id IN ({','.join('?' * len(ranked))})",
            [c.file_id for c in ranked])} if ranked else {}
        return [SearchHit(c.file_id, names.get(c.file_id, ""), c.score,
                          attributes.get((c.vector_store_id, c.file_id), {}), c.text, c.vector_store_id)
                for c in ranked if c.score >= score_threshold]



def _load_embedder(config: RetrievalConfig):
    from livecast.engine.embedder import Embedder

    return Embedder.from_pretrained(config.embedding_model, device=config.device)


@asynccontextmanager
async def retrieval_service(config: RetrievalConfig, db, retry_after_s: int = 1) -> AsyncIterator[RetrievalService]:
    """Build the service (the model loads on a worker thread), start ingestion, and stop it all after."""
    if not config.data_dir:
        raise ValueError("retrieval needs a data_dir for uploaded files")
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    embedder = None
    if config.embedding_model != "none":
        # a thread that exits: an executor thread that ran torch ops would keep an OpenMP pool alive
        # and slow every later model call on the batcher's thread (see services.runtime.threads)
        embedder = await on_own_thread(_load_embedder, config)
    service = RetrievalService(config, db, embedder, retry_after_s)
    if service.batcher is not None and config.batcher_thread:
        service.batcher.start()
    if service.ingestor is not None:
        service.ingestor.start()
    try:
        yield service
    finally:
        if service.ingestor is not None:
            await service.ingestor.stop()
        if service.batcher is not None:
            service.batcher.stop()
