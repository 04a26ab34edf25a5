"""Stored chat completions (`store: true` on POST /v1/chat/completions, which the LLM room serves):
list with filters, retrieve, update metadata, delete, and the request's messages."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from livecast.services.agents.deps import get_agents
from livecast.services.agents.responses.protocol import Metadata

router = APIRouter()


class MetadataUpdate(BaseModel):
    metadata: Metadata = Field(max_length=16)


def _metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters, as OpenAI's clients send a metadata filter."""
    return {k[9:-1]: v for k, v in request.query_params.items() if k.startswith("metadata[") and k.endswith("]")}


@router.get("/v1/chat/completions")
async def list_chat_completions(request: Request, model: str | None = None, after: str | None = None,
                                limit: int = 20, order: Literal["asc", "desc"] = "asc", agents=Depends(get_agents)):
    return agents.chat_completions.list(model=model, metadata=_metadata_filter(request), after=after, limit=limit,
                                        order=order)


@router.get("/v1/chat/completions/{completion_id}")
async def get_chat_completion(completion_id: str, agents=Depends(get_agents)):
    return agents.chat_completions.get(completion_id)


@router.post("/v1/chat/completions/{completion_id}")
async def update_chat_completion(completion_id: str, body: MetadataUpdate, agents=Depends(get_agents)):
    return agents.chat_completions.update(completion_id, body.metadata)


@router.delete("/v1/chat/completions/{completion_id}")
async def delete_chat_completion(completion_id: str, agents=Depends(get_agents)):
    return agents.chat_completions.delete(completion_id)


@router.get("/v1/chat/completions/{completion_id}/messages")
async def list_chat_completion_messages(completion_id: str, after: str | None = None, limit: int = 20,
                                        order: Literal["asc", "desc"] = "asc", agents=Depends(get_agents)):
    return agents.chat_completions.messages(completion_id, after=after, limit=limit, order=order)
