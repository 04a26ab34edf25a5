"""`/v1/embeddings`: OpenAI's four input shapes through the retrieval room's embedding batcher."""
from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel

from livecast.services.errors import APIError
from livecast.services.retrieval.deps import get_retrieval

router = APIRouter()
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit
class EmbeddingsRequest(BaseModel):
    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


def _inputs(value: Any) -> list[str] | list[list[int]]:
    """OpenAI's four input shapes as a list of strings or a list of token-id lists."""
    def is_ids(v):
        return isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if isinstance(value, str):
        value = [value]
    elif is_ids(value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise APIError(400, "input must be a string, a list of strings, a list of token ids or a list of "
                       "token-id lists, and not empty", param="input")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise APIError(400, f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(value)}", param="input")
    if all(isinstance(v, str) for v in value):
        if any(not v for v in value):
            raise APIError(400, "input must not contain empty strings", param="input")
        return value
    if all(is_ids(v) for v in value):
        return value
    raise APIError(400, "input mixes types or holds an empty list: use all strings or all token-id lists",
                   param="input")


@router.post("/v1/embeddings")
async def embeddings(request: Request, body: EmbeddingsRequest):
    service = get_retrieval(request)
    service.require_embedder()
    dim = service.embedder.dim
    if body.dimensions is not None and not 1 <= body.dimensions <= dim:
        raise APIError(400, f"dimensions must be in 1..{dim} for this model", param="dimensions")
    result = await service.embed(_inputs(body.input))
    vectors = result.vectors  # (n, dim)
    if body.dimensions is not None and body.dimensions < dim:
        # Matryoshka-style shortening, as OpenAI does: cut, then back to unit length
        vectors = vectors[:, :body.dimensions]
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(v.tobytes()).decode() if body.encoding_format == "base64" else v.tolist()}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": body.model or service.embedding_model_name,
            "usage": {"prompt_tokens": result.num_tokens, "total_tokens": result.num_tokens}}
