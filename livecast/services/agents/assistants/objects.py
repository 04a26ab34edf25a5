"""Assistants v2 object shapes: messages (and their items for the run loop), runs, run steps."""
from __future__ import annotations

import time

from livecast.services.agents.responses.items import message_item
from livecast.services.agents.store import new_id
from livecast.services.agents.tools import file_search
from livecast.services.errors import APIError


def text_parts(content, param: str = "content") -> list[dict]:
    """A message's `content` (a string, or `text` parts) as stored `text` content blocks."""
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    blocks = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"{param}[{i}]: only text parts are supported (the model reads text), got "
                                f"{part.get('type')!r}", param=f"{param}[{i}]")
        blocks.append({"type": "text", "text": {"value": part["text"], "annotations": []}})
    return blocks


def message_object(thread_id: str, role: str, content: list[dict], *, run_id: str | None = None,
                   assistant_id: str | None = None, status: str = "completed", metadata: dict | None = None,
                   attachments: list | None = None) -> dict:
    now = int(time.time())
    return {"id": new_id("msg"), "object": "thread.message", "created_at": now, "thread_id": thread_id,
            "status": status, "incomplete_details": None, "completed_at": now if status == "completed" else None,
            "incomplete_at": None, "role": role, "content": content, "assistant_id": assistant_id,
            "run_id": run_id, "attachments": attachments or [], "metadata": metadata or {}}


def message_to_item(message: dict) -> dict:
    text = "".join(block["text"]["value"] for block in message["content"] if block["type"] == "text")
    return message_item(message["role"], text, message["id"])


def step_object(run: dict, kind: str, details) -> dict:
    return {"id": new_id("step"), "object": "thread.run.step", "created_at": int(time.time()), "run_id": run["id"],
            "assistant_id": run["assistant_id"], "thread_id": run["thread_id"], "type": kind,
            "status": "in_progress", "step_details": {"type": kind, kind: details}, "last_error": None,
            "expired_at": None, "cancelled_at": None, "failed_at": None, "completed_at": None, "metadata": {},
            "usage": None}


def step_items(step: dict) -> list[dict]:
    """A tool_calls step as Responses items (calls, then the outputs submitted so far)."""
    calls, outputs = [], []
    for call in step["step_details"].get("tool_calls", []):
        if call["type"] == "function":
            f = call["function"]
            calls.append({"id": new_id("fc"), "type": "function_call", "call_id": call["id"], "name": f["name"],
                          "arguments": f["arguments"], "status": "completed"})
            if f.get("output") is not None:
                outputs.append({"id": new_id("fco"), "type": "function_call_output", "call_id": call["id"],
                                "output": f["output"], "status": "completed"})
        elif call["type"] == "code_interpreter":
            ci = call["code_interpreter"]
            calls.append({"id": call["id"], "type": "code_interpreter_call", "code": ci["input"],
                          "outputs": ci["outputs"], "status": "completed"})
        elif call["type"] == "file_search":
            calls.append(file_search.item_from_step(call))
    return calls + outputs


def tool_call_entry(item: dict) -> dict:
    """A loop output item as a run step's tool call."""
    if item["type"] == "function_call":
        return {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"], "output": None}}
    if item["type"] == "file_search_call":
        return file_search.step_call(item)
    return {"id": item["id"], "type": "code_interpreter",
            "code_interpreter": {"input": item["code"], "outputs": item.get("outputs") or []}}


def finish(obj: dict, status: str, **fields) -> dict:
    """Set a terminal status and its timestamp (`completed_at`, `failed_at`, `cancelled_at`)."""
    obj.update(status=status, **fields)
    stamp = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at",
             "expired": "expired_at", "incomplete": "incomplete_at"}.get(status)
    if stamp in obj:
        obj[stamp] = int(time.time())
    return obj


def text_annotations(text: str, annotations: list[dict]) -> tuple[str, list[dict]]:
    """A run's answer with Assistants-style citations: the Responses `file_citation`s (at `index`)
    become `【n†filename】` markers appended to the text, each annotation spanning its marker."""
    out = []
    for n, a in enumerate(a for a in annotations if a["type"] == "file_citation"):
        marker = f"【{n}†{a['filename']}】"
        out.append({"type": "file_citation", "text": marker, "start_index": len(text),
                    "end_index": len(text) + len(marker), "file_citation": {"file_id": a["file_id"]}})
        text += marker
    return text, out
