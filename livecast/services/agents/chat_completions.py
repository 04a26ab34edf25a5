"""Stored chat completions: `POST /v1/chat/completions` with `store: true` keeps the completion and
its request messages here, in the agent store (two tables of its portable layout, each row in its
project), for `GET /v1/chat/completions` (filtered by model and metadata), retrieve, update
(metadata), delete and `/messages`.

The LLM room never imports this room: the agents lifespan hands `ChatCompletionStore` to the LLM
service as its `completion_store`, and the chat route saves through it. Retention is the store's:
the sweeper's age limit and `--max-chat-completions` per project.
"""
from __future__ import annotations

from livecast.services.agents.store import AgentStore
from livecast.services.retrieval.pagination import check_page_args, list_object

_SCAN_PAGE = 100  # rows read per query while filtering a list


def _message(completion_id: str, index: int, message: dict) -> dict:
    """A request message as OpenAI lists it: an id, text `content`, and `content_parts` when the
    message was sent as parts."""
    content = message.get("content")
    parts = content if isinstance(content, list) else None
    if parts is not None:
        content = "".join(p.get("text", "") for p in parts if isinstance(p, dict) and p.get("type") == "text")
    out = {"id": f"{completion_id}-{index}", "role": message["role"], "content": content, "refusal": None,
           "content_parts": parts}
    for key in ("name", "tool_calls", "tool_call_id"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


class ChatCompletionStore:
    """What the LLM room's chat route saves through (its `completion_store`)."""

    def __init__(self, store: AgentStore) -> None:
        self.store = store

    def save(self, project: str, completion: dict, messages: list[dict], metadata: dict | None) -> dict:
        store = self.store.scoped(project)
        stored = {**completion, "metadata": metadata or {}}
        with store.db.transaction():
            store.chat_completions.insert(stored)
            store.chat_messages.insert_many([_message(completion["id"], i, m) for i, m in enumerate(messages)],
                                            completion["id"])
        return stored


class StoredChatCompletions:
    """The routes' view, in the request's project."""

    def __init__(self, store: AgentStore) -> None:
        self.store = store

    def get(self, completion_id: str) -> dict:
        return self.store.chat_completions.require(completion_id, param="completion_id")

    def list(self, *, model: str | None, metadata: dict[str, str], after: str | None, limit: int,
             order: str) -> dict:
        """A page of the completions whose model and metadata match; `after` is the last id seen."""
        check_page_args(limit, order)
        if after:
            self.get(after)
        found: list[dict] = []
        cursor = after or None
        while len(found) <= limit:
            rows, more = self.store.chat_completions.page(after=cursor, limit=_SCAN_PAGE, order=order)
            found += [r for r in rows if (model is None or r["model"] == model)
                      and all(r.get("metadata", {}).get(k) == v for k, v in metadata.items())]
            if not more:
                break
            cursor = rows[-1]["id"]
        return list_object(found[:limit], len(found) > limit)

    def update(self, completion_id: str, metadata: dict[str, str]) -> dict:
        with self.store.db.transaction():
            completion = self.get(completion_id)
            completion["metadata"] = metadata
            self.store.chat_completions.update(completion)
        return completion

    def delete(self, completion_id: str) -> dict:
        with self.store.db.transaction():
            self.get(completion_id)
            self.store.chat_messages.delete_children(completion_id)
            self.store.chat_completions.delete(completion_id)
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}

    def messages(self, completion_id: str, *, after: str | None, limit: int, order: str) -> dict:
        self.get(completion_id)
        return list_object(*self.store.chat_messages.page(completion_id, after=after, limit=limit, order=order))
