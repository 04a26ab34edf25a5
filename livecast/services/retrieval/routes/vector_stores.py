"""`/v1/vector_stores` and its sub-routes: stores, their files, file batches and search."""
from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from livecast.services.errors import APIError
from livecast.services.retrieval.deps import get_retrieval
from livecast.services.retrieval.pagination import list_object
from livecast.services.retrieval.service import RetrievalService

router = APIRouter(prefix="/v1/vector_stores")
Order = Literal["asc", "desc"]


def _stores(request: Request) -> RetrievalService:
    service = get_retrieval(request)
    service.require_embedder()
    return service


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateStore(_Body):
    name: str | None = None
    file_ids: list[str] = []
    metadata: dict[str, Any] | None = None
    expires_after: dict[str, Any] | None = None
    chunking_strategy: dict[str, Any] | None = None


class AddFile(_Body):
    file_id: str
    attributes: dict[str, Any] | None = None
    chunking_strategy: dict[str, Any] | None = None


class UpdateFile(_Body):
    attributes: dict[str, Any] | None


class CreateBatch(_Body):
    file_ids: list[str] | None = None
    files: list[AddFile] | None = None  # per-file attributes and chunking (newer API shape)
    attributes: dict[str, Any] | None = None
    chunking_strategy: dict[str, Any] | None = None


class Search(_Body):
    query: str | list[str]
    max_num_results: int = 10
    filters: dict[str, Any] | None = None
    ranking_options: dict[str, Any] | None = None
    rewrite_query: bool = False


# -- stores --------------------------------------------------------------------------------------
@router.post("")
async def create_store(request: Request, body: CreateStore):
    return _stores(request).vector_stores.create(body.name, body.metadata, body.expires_after, body.file_ids,
                                                 body.chunking_strategy)


@router.get("")
async def list_stores(request: Request, after: str | None = None, before: str | None = None, limit: int = 20,
                      order: Order = "desc"):
    return list_object(*_stores(request).vector_stores.list(after, before, limit, order))


@router.get("/{store_id}")
async def get_store(request: Request, store_id: str):
    return _stores(request).vector_stores.get(store_id)


@router.post("/{store_id}")
async def update_store(request: Request, store_id: str):
    try:
        fields = await request.json()
    except ValueError:
        raise APIError(400, "request body is not valid JSON") from None
    if not isinstance(fields, dict):
        raise APIError(400, "request body must be a JSON object")
    return _stores(request).vector_stores.update(store_id, fields)


@router.delete("/{store_id}")
async def delete_store(request: Request, store_id: str):
    await asyncio.to_thread(_stores(request).vector_stores.delete, store_id)
    return {"id": store_id, "object": "vector_store.deleted", "deleted": True}


@router.post("/{store_id}/search")
async def search(request: Request, store_id: str, body: Search):
    ranking = body.ranking_options or {}
    hybrid = ranking.get("hybrid_search") or {}
    try:
        threshold = float(ranking.get("score_threshold", 0.0))
        weights = float(hybrid.get("embedding_weight", 1.0)), float(hybrid.get("text_weight", 1.0))
    except (TypeError, ValueError):
        raise APIError(400, "ranking_options values must be numbers", param="ranking_options") from None
    if min(weights) < 0 or max(weights) == 0:
        raise APIError(400, "ranking_options.hybrid_search weights must be >= 0 and not both 0",
                       param="ranking_options.hybrid_search")
    hits = await _stores(request).search([store_id], body.query, body.max_num_results, body.filters, threshold,
                                         embedding_weight=weights[0], text_weight=weights[1])
    return {"object": "vector_store.search_results.page",
            "search_query": [body.query] if isinstance(body.query, str) else body.query,
            "data": [{"file_id": h.file_id, "filename": h.filename, "score": h.score, "attributes": h.attributes,
                      "content": [{"type": "text", "text": h.text}]} for h in hits],
            "has_more": False, "next_page": None}


# -- files in a store ---------------------------------------------------------------------------------
@router.post("/{store_id}/files")
async def add_file(request: Request, store_id: str, body: AddFile):
    return _stores(request).vector_stores.add_file(store_id, body.file_id, body.attributes, body.chunking_strategy)


@router.get("/{store_id}/files")
async def list_store_files(request: Request, store_id: str, filter: str | None = None, after: str | None = None,
                           before: str | None = None, limit: int = 20, order: Order = "desc"):
    return list_object(*_stores(request).vector_stores.list_files(store_id, filter, None, after, before, limit, order))


@router.get("/{store_id}/files/{file_id}")
async def get_store_file(request: Request, store_id: str, file_id: str):
    return _stores(request).vector_stores.get_file(store_id, file_id)


@router.post("/{store_id}/files/{file_id}")
async def update_store_file(request: Request, store_id: str, file_id: str, body: UpdateFile):
    return _stores(request).vector_stores.update_file(store_id, file_id, body.attributes)


@router.delete("/{store_id}/files/{file_id}")
async def remove_store_file(request: Request, store_id: str, file_id: str):
    await asyncio.to_thread(_stores(request).vector_stores.remove_file, store_id, file_id)
    return {"id": file_id, "object": "vector_store.file.deleted", "deleted": True}


@router.get("/{store_id}/files/{file_id}/content")
async def store_file_content(request: Request, store_id: str, file_id: str):
    service = _stores(request)
    service.vector_stores.file_row(store_id, file_id)
    rows = service.db.query("SELECT text FROM chunks WHERE vector_store_id = ? AND file_id = ? ORDER BY seq",
                            (store_id, file_id))
    return {"object": "vector_store.file_content.page", "data": [{"type": "text", "text": r["text"]} for r in rows],
            "has_more": False, "next_page": None}


# -- file batches ---------------------------------------------------------------------------------------
@router.post("/{store_id}/file_batches")
async def create_batch(request: Request, store_id: str, body: CreateBatch):
    if (body.file_ids is None) == (body.files is None):
        raise APIError(400, "give exactly one of file_ids or files", param="file_ids")
    entries = ([(f, body.attributes, body.chunking_strategy) for f in body.file_ids] if body.file_ids is not None
               else [(f.file_id, f.attributes, f.chunking_strategy or body.chunking_strategy) for f in body.files])
    return _stores(request).vector_stores.create_batch(store_id, entries)


@router.get("/{store_id}/file_batches/{batch_id}")
async def get_batch(request: Request, store_id: str, batch_id: str):
    return _stores(request).vector_stores.get_batch(store_id, batch_id)


@router.post("/{store_id}/file_batches/{batch_id}/cancel")
async def cancel_batch(request: Request, store_id: str, batch_id: str):
    return _stores(request).vector_stores.cancel_batch(store_id, batch_id)


@router.get("/{store_id}/file_batches/{batch_id}/files")
async def list_batch_files(request: Request, store_id: str, batch_id: str, filter: str | None = None,
                           after: str | None = None, before: str | None = None, limit: int = 20, order: Order = "desc"):
    stores = _stores(request).vector_stores
    stores.get_batch(store_id, batch_id)
    return list_object(*stores.list_files(store_id, filter, batch_id, after, before, limit, order))
