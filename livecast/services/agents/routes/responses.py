"""/v1/responses: create (plain, streamed, background), retrieve, delete, cancel, input items."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Request

from livecast.services.agents.deps import get_agents
from livecast.services.agents.responses import compaction
from livecast.services.retrieval.pagination import list_object
from livecast.services.agents.responses.protocol import ResponseCreate
from livecast.services.llm.streaming import sse_response, until_disconnected

router = APIRouter()


@router.post("/v1/responses")
async def create_response(request: Request, body: ResponseCreate, agents=Depends(get_agents)):
    async def respond():
        result = await agents.responses.create(body)
        return sse_response(result) if body.stream else result

    return await until_disconnected(request, respond())


@router.post("/v1/responses/input_tokens")
async def count_input_tokens(body: ResponseCreate, agents=Depends(get_agents)):
    return compaction.input_tokens(agents.responses, body)


@router.post("/v1/responses/compact")
async def compact_response(body: ResponseCreate, agents=Depends(get_agents)):
    return compaction.compact(agents.responses, body)


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, agents=Depends(get_agents)):
    return agents.responses.get(response_id)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, agents=Depends(get_agents)):
    return await agents.responses.delete(response_id)


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, agents=Depends(get_agents)):
    return await agents.responses.cancel(response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, after: str | None = None, before: str | None = None, limit: int = 20,
                           order: Literal["asc", "desc"] = "desc", agents=Depends(get_agents)):
    agents.responses.get(response_id)
    items, has_more = agents.store.items.page(response_id, after=after, before=before, limit=limit, order=order)
    return list_object(items, has_more)
