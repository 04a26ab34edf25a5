"""Responses items: checked and normalised on the way in, turned into chat messages for the prompt.

Input is a string or a list of items: `message` (role user/system/developer/assistant, content a
string or `input_text`/`output_text`/`input_image` parts, or `input_file` sent inline and read as
text), `function_call`, `function_call_output` and the built-in tools' call items a client passes
back (`code_interpreter_call`, `file_search_call`).
Every item stored gets a fresh `id` (a client passing back earlier output items resends their ids,
which must not collide).
"""
from __future__ import annotations

import base64
import functools
import json

from livecast.services.agents.store import new_id
from livecast.services.agents.tools import mcp
from livecast.services.agents.tools.file_search import render as render_search
from livecast.services.retrieval.parsers import ParseError, extract_text
from livecast.services.errors import APIError

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text")


def normalize_input(value, param: str = "input") -> list[dict]:
    """The request's `input` as a list of normalised items; APIError(400) naming the bad one."""
    if isinstance(value, str):
        return [message_item("user", value)]
    if not isinstance(value, list):
        raise APIError(400, f"{param} must be a string or a list of items", param=param)
    return [_item(item, f"{param}[{i}]") for i, item in enumerate(value)]


def message_item(role: str, text: str, item_id: str | None = None) -> dict:
    part = "output_text" if role == "assistant" else "input_text"
    content = {"type": part, "text": text, **({"annotations": [], "logprobs": []} if part == "output_text" else {})}
    return {"id": item_id or new_id("msg"), "type": "message", "role": role, "status": "completed",
            "content": [content]}


def _item(item, param: str) -> dict:
    if not isinstance(item, dict):
        raise APIError(400, f"{param} must be an object", param=param)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        return _message(item, param)
    if kind == "function_call":
        _require_str(item, ("call_id", "name", "arguments"), param)
        return {"id": new_id("fc"), "type": kind, "call_id": item["call_id"], "name": item["name"],
                "arguments": item["arguments"], "status": "completed"}
    if kind == "function_call_output":
        _require_str(item, ("call_id",), param)
        output = item.get("output")
        if not isinstance(output, str):
            output = json.dumps(output, ensure_ascii=False)
        return {"id": new_id("fco"), "type": kind, "call_id": item["call_id"], "output": output,
                "status": "completed"}
    if kind == "code_interpreter_call":
        _require_str(item, ("code",), param)
        return {**item, "id": new_id("ci")}
    if kind in mcp.ITEM_TYPES:
        return mcp.input_item(item, param)
    if kind == "file_search_call":
        queries = item.get("queries")
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise APIError(400, f"{param}.queries is required (a list of strings) for a file_search_call item",
                           param=f"{param}.queries")
        return {"id": new_id("fs"), "type": kind, "queries": queries, "status": item.get("status") or "completed",
                "results": item.get("results")}
    raise APIError(400, f"{param}.type: unsupported item type {kind!r}; expected message, function_call, "
                        f"function_call_output, code_interpreter_call or file_search_call", param=f"{param}.type",
                   code="invalid_item_type")


def _message(item: dict, param: str) -> dict:
    role = item.get("role")
    if role not in ROLES:
        raise APIError(400, f"{param}.role must be one of {list(ROLES)}, got {role!r}", param=f"{param}.role")
    content = item.get("content")
    if isinstance(content, str):
        return message_item(role, content)
    if not isinstance(content, list):
        raise APIError(400, f"{param}.content must be a string or a list of parts", param=f"{param}.content")
    parts = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({**part, "type": "output_text" if role == "assistant" else "input_text"})
        elif kind == "input_image":
            parts.append(part)
        elif kind == "input_file":
            parts.append(_file_part(part, where))
        elif kind == "refusal" and role == "assistant":
            parts.append(part)
        else:
            raise APIError(400, f"{where}: unsupported content part {kind!r}; expected input_text, output_text, "
                                f"input_file or input_image", param=where, code="invalid_item_type")
    for p in parts:
        if p["type"] == "output_text":  # both required by OpenAI's document
            p.setdefault("annotations", [])
            p.setdefault("logprobs", [])
    return {"id": new_id("msg"), "type": "message", "role": role, "status": "completed",
            "content": parts}


def _file_part(part: dict, where: str) -> dict:
    """An `input_file` sent inline (`filename` + `file_data`, base64 or a data: URL): its text is read
    now, so a file the parsers cannot read is a 400 before anything runs."""
    if part.get("file_id") is not None or part.get("file_url") is not None:
        raise APIError(400, f"{where}: input_file by file_id or file_url is not supported; send the file inline as "
                            f"filename + file_data (base64)", param=where, code="unsupported_content")
    filename, data = part.get("filename"), part.get("file_data")
    if not isinstance(filename, str) or not isinstance(data, str):
        raise APIError(400, f"{where}: an input_file needs filename and file_data (strings)", param=where)
    _file_text(filename, data, where)
    return {"type": "input_file", "filename": filename, "file_data": data}


@functools.lru_cache(maxsize=32)  # a context is rendered once per turn; a PDF is parsed once
def _file_text(filename: str, data: str, where: str = "input") -> str:
    try:
        raw = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=True)
        return extract_text(filename, raw)
    except (ValueError, ParseError) as exc:  # binascii.Error is a ValueError
        raise APIError(400, f"{where}.file_data: {exc}", param=f"{where}.file_data",
                       code="invalid_file") from None


def _require_str(item: dict, keys: tuple[str, ...], param: str) -> None:
    for key in keys:
        if not isinstance(item.get(key), str):
            raise APIError(400, f"{param}.{key} is required (a string) for a {item.get('type')} item",
                           param=f"{param}.{key}")


def check_call_outputs(context: list[dict], new_items: list[dict], param: str = "input") -> None:
    """Each `function_call_output` answers a `function_call` made earlier in the context."""
    known = {i["call_id"] for i in context if i.get("type") == "function_call"}
    for i, item in enumerate(new_items):
        if item["type"] == "function_call":
            known.add(item["call_id"])
        elif item["type"] == "function_call_output" and item["call_id"] not in known:
            raise APIError(400, f"No tool call found for function call output with call_id {item['call_id']!r}.",
                           param=f"{param}[{i}]", code="invalid_tool_output")


def item_text(item: dict) -> str:
    """A message item's text (parts joined); a text-only model cannot take images."""
    texts = []
    for part in item.get("content") or []:
        if part.get("type") == "input_image":
            raise APIError(400, "input_image: the served model has no vision support (it reads text only); send "
                                "the image's description as input_text", param="input", code="unsupported_content")
        if part.get("type") == "input_file":
            texts.append(f"[{part['filename']}]\n{_file_text(part['filename'], part['file_data'])}\n")
            continue
        texts.append(part.get("text") or part.get("refusal") or "")
    return "".join(texts)


def to_messages(items: list[dict]) -> list[dict]:
    """Chat messages (services.llm.chat_template's input) for a context of items, in order."""
    messages: list[dict] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append({"role": item["role"], "content": item_text(item)})
            continue
        if kind in mcp.ITEM_TYPES and kind != "mcp_call":  # lists are offered as functions; approvals end in calls
            continue
        if kind == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
        elif kind == "code_interpreter_call":
            call = {"id": item["id"], "type": "function",
                    "function": {"name": "code_interpreter", "arguments": json.dumps({"code": item["code"]})}}
        elif kind == "file_search_call":
            query = (item.get("queries") or [""])[0]
            call = {"id": item["id"], "type": "function",
                    "function": {"name": "file_search", "arguments": json.dumps({"query": query})}}
        elif kind == "mcp_call":
            call = {"id": item["id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
        else:  # function_call_output
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
            continue
        last = messages[-1] if messages else None
        if last is None or last["role"] != "assistant":
            last = {"role": "assistant", "content": ""}
            messages.append(last)
        last.setdefault("tool_calls", []).append(call)
        if kind == "code_interpreter_call":
            logs = "".join(o.get("logs", "") for o in item.get("outputs") or [] if o.get("type") == "logs")
            messages.append({"role": "tool", "tool_call_id": item["id"], "content": logs})
        elif kind == "file_search_call":
            messages.append({"role": "tool", "tool_call_id": item["id"], "content": render_search(item)})
        elif kind == "mcp_call":
            messages.append({"role": "tool", "tool_call_id": item["id"], "content": mcp.render(item)})
    return messages
