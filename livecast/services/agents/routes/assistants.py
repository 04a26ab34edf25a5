"""/v1/assistants, /v1/threads and /v1/threads/{id}/messages (Assistants v2, over the agent store)."""
from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Depends

from livecast.services.agents.assistants.objects import message_object, text_parts
from livecast.services.agents.assistants.protocol import (AssistantCreate, AssistantUpdate, MessageCreate, MetadataUpdate,
                                                 ThreadCreate)
from livecast.services.agents.deps import get_agents
from livecast.services.retrieval.pagination import list_object
from livecast.services.agents.store import new_id
from livecast.services.agents.tools import build_toolset
from livecast.services.errors import APIError

router = APIRouter()
Order = Literal["asc", "desc"]


def _deleted(object_id: str, kind: str) -> dict:
    return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}


def check_tool_resources(agents, tool_resources: dict | None) -> None:
    """404 unless every vector store and file that `tool_resources` names is the project's own."""
    retrieval = agents.tools.retrieval
    if retrieval is None or not isinstance(tool_resources, dict):
        return

    def ids(tool: str, key: str) -> list:
        named = (tool_resources.get(tool) or {}).get(key) if isinstance(tool_resources.get(tool), dict) else None
        return named if isinstance(named, list) else []

    for store_id in ids("file_search", "vector_store_ids"):
        retrieval.vector_stores.row(str(store_id))
    for file_id in ids("code_interpreter", "file_ids"):
        retrieval.files.get(str(file_id))


# -- assistants -----------------------------------------------------------------------------------
def _check_assistant(agents, body) -> str | None:
    """Checks the body; the LoRA adapter its `model` names (None: the base model)."""
    lora = agents.llm.resolve_model(body.model)
    build_toolset(body.tools, agents.tools)
    check_tool_resources(agents, body.tool_resources)
    if isinstance(body.response_format, str) and body.response_format != "auto":
        raise APIError(400, "response_format must be 'auto' or an object", param="response_format")
    return lora


@router.post("/v1/assistants")
async def create_assistant(body: AssistantCreate, agents=Depends(get_agents)):
    lora = _check_assistant(agents, body)
    assistant = {"id": new_id("asst"), "object": "assistant", "created_at": int(time.time()), "name": body.name,
                 "description": body.description, "model": agents.llm.served_name(lora), "instructions": body.instructions,
                 "tools": body.tools or [], "tool_resources": body.tool_resources or {}, "metadata": body.metadata or {},
                 "temperature": body.temperature, "top_p": body.top_p, "response_format": body.response_format or "auto"}
    return agents.store.assistants.insert(assistant)


@router.get("/v1/assistants")
async def list_assistants(after: str | None = None, before: str | None = None, limit: int = 20, order: Order = "desc",
                          agents=Depends(get_agents)):
    return list_object(*agents.store.assistants.page(after=after, before=before, limit=limit, order=order))


@router.get("/v1/assistants/{assistant_id}")
async def get_assistant(assistant_id: str, agents=Depends(get_agents)):
    return agents.store.assistants.require(assistant_id)


@router.post("/v1/assistants/{assistant_id}")
async def update_assistant(assistant_id: str, body: AssistantUpdate, agents=Depends(get_agents)):
    lora = _check_assistant(agents, body)
    with agents.store.db.transaction():
        assistant = agents.store.assistants.require(assistant_id)
        assistant.update(body.model_dump(exclude_unset=True, exclude={"model"}))
        if body.model is not None:
            assistant["model"] = agents.llm.served_name(lora)
        agents.store.assistants.update(assistant)
    return assistant


@router.delete("/v1/assistants/{assistant_id}")
async def delete_assistant(assistant_id: str, agents=Depends(get_agents)):
    agents.store.assistants.require(assistant_id)
    agents.store.assistants.delete(assistant_id)
    return _deleted(assistant_id, "assistant")


# -- threads --------------------------------------------------------------------------------------
def create_thread_now(agents, body: ThreadCreate) -> dict:
    """The thread and its first messages, in one transaction (also used by POST /v1/threads/runs)."""
    check_tool_resources(agents, body.tool_resources)
    thread = {"id": new_id("thread"), "object": "thread", "created_at": int(time.time()),
              "metadata": body.metadata or {}, "tool_resources": body.tool_resources or {}}
    messages = [_message(thread["id"], m, f"messages[{i}].content") for i, m in enumerate(body.messages or [])]
    with agents.store.db.transaction():
        agents.store.threads.insert(thread)
        agents.store.messages.insert_many(messages, thread["id"])
    return thread


def _message(thread_id: str, m: MessageCreate, param: str) -> dict:
    return message_object(thread_id, m.role, text_parts(m.content, param), metadata=m.metadata,
                          attachments=m.attachments)


@router.post("/v1/threads")
async def create_thread(body: ThreadCreate | None = None, agents=Depends(get_agents)):
    return create_thread_now(agents, body or ThreadCreate())


@router.get("/v1/threads/{thread_id}")
async def get_thread(thread_id: str, agents=Depends(get_agents)):
    return agents.store.threads.require(thread_id)


@router.post("/v1/threads/{thread_id}")
async def update_thread(thread_id: str, body: MetadataUpdate, agents=Depends(get_agents)):
    check_tool_resources(agents, body.tool_resources)
    with agents.store.db.transaction():
        thread = agents.store.threads.require(thread_id)
        thread.update(body.model_dump(exclude_unset=True))
        agents.store.threads.update(thread)
    return thread


@router.delete("/v1/threads/{thread_id}")
async def delete_thread(thread_id: str, agents=Depends(get_agents)):
    agents.store.threads.require(thread_id)
    for run in agents.store.runs.children(thread_id):
        await agents.background.cancel(run["id"])
    agents.store.delete_thread(thread_id)
    return _deleted(thread_id, "thread")


# -- messages -------------------------------------------------------------------------------------
@router.post("/v1/threads/{thread_id}/messages")
async def create_message(thread_id: str, body: MessageCreate, agents=Depends(get_agents)):
    message = _message(thread_id, body, "content")
    with agents.store.db.transaction():
        agents.store.threads.require(thread_id)
        agents.store.messages.insert(message, thread_id)
    return message


@router.get("/v1/threads/{thread_id}/messages")
async def list_messages(thread_id: str, after: str | None = None, before: str | None = None, limit: int = 20,
                        order: Order = "desc", run_id: str | None = None, agents=Depends(get_agents)):
    agents.store.threads.require(thread_id)
    if run_id is None:
        return list_object(*agents.store.messages.page(thread_id, after=after, before=before, limit=limit, order=order))
    messages = [m for m in agents.store.messages.children(thread_id) if m["run_id"] == run_id]
    return list_object(messages if order == "asc" else messages[::-1], False)


@router.get("/v1/threads/{thread_id}/messages/{message_id}")
async def get_message(thread_id: str, message_id: str, agents=Depends(get_agents)):
    agents.store.threads.require(thread_id)
    return agents.store.messages.require(message_id, thread_id)


@router.post("/v1/threads/{thread_id}/messages/{message_id}")
async def update_message(thread_id: str, message_id: str, body: MetadataUpdate, agents=Depends(get_agents)):
    with agents.store.db.transaction():
        message = agents.store.messages.require(message_id, thread_id)
        message["metadata"] = body.metadata or {}
        agents.store.messages.update(message, thread_id)
    return message


@router.delete("/v1/threads/{thread_id}/messages/{message_id}")
async def delete_message(thread_id: str, message_id: str, agents=Depends(get_agents)):
    agents.store.messages.require(message_id, thread_id)
    agents.store.messages.delete(message_id, thread_id)
    return _deleted(message_id, "thread.message")
