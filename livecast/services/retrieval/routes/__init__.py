"""The retrieval room's HTTP edge: `/v1/files`, `/v1/embeddings` and `/v1/vector_stores`; `router`
carries all three."""
from fastapi import APIRouter

from livecast.services.retrieval.routes import embeddings, files, vector_stores

router = APIRouter()
for part in (files.router, embeddings.router, vector_stores.router):
    router.include_router(part)
