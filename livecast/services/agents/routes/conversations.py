"""/v1/conversations: a conversation and its items (what responses with `conversation` read and append)."""
from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends

from livecast.services.agents.deps import get_agents
from livecast.services.retrieval.pagination import list_object
from livecast.services.agents.responses.items import normalize_input
from livecast.services.agents.responses.protocol import ConversationCreate, ConversationUpdate, ItemsCreate
from livecast.services.agents.store import new_id

router = APIRouter()


@router.post("/v1/conversations")
async def create_conversation(body: ConversationCreate, agents=Depends(get_agents)):
    store = agents.store
    items = normalize_input(body.items or [], param="items")
    conversation = {"id": new_id("conv"), "object": "conversation", "created_at": int(time.time()),
                    "metadata": body.metadata or {}}
    with store.db.transaction():
        store.conversations.insert(conversation)
        store.items.insert_many(items, conversation["id"])
    return conversation


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, agents=Depends(get_agents)):
    return agents.store.conversations.require(conversation_id)


@router.post("/v1/conversations/{conversation_id}")
async def update_conversation(conversation_id: str, body: ConversationUpdate, agents=Depends(get_agents)):
    store = agents.store
    with store.db.transaction():
        conversation = {**store.conversations.require(conversation_id), "metadata": body.metadata}
        store.conversations.update(conversation)
    return conversation


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, agents=Depends(get_agents)):
    agents.store.conversations.require(conversation_id)
    agents.store.delete_conversation(conversation_id)
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


@router.get("/v1/conversations/{conversation_id}/items")
async def list_items(conversation_id: str, after: str | None = None, before: str | None = None, limit: int = 20,
                     order: Literal["asc", "desc"] = "desc", agents=Depends(get_agents)):
    agents.store.conversations.require(conversation_id)
    items, has_more = agents.store.items.page(conversation_id, after=after, before=before, limit=limit, order=order)
    return list_object(items, has_more)


@router.post("/v1/conversations/{conversation_id}/items")
async def create_items(conversation_id: str, body: ItemsCreate, agents=Depends(get_agents)):
    store = agents.store
    items = normalize_input(body.items, param="items")
    with store.db.transaction():
        store.conversations.require(conversation_id)
        store.items.insert_many(items, conversation_id)
    return list_object(items, False)


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, agents=Depends(get_agents)):
    agents.store.conversations.require(conversation_id)
    return agents.store.items.require(item_id, conversation_id)


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: str, item_id: str, agents=Depends(get_agents)):
    store = agents.store
    with store.db.transaction():
        conversation = store.conversations.require(conversation_id)
        store.items.require(item_id, conversation_id)
        store.items.delete(item_id, conversation_id)
    return conversation
