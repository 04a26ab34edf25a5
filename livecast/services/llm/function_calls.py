"""Function calling: resolve `tool_choice`, and split generated text into content and tool calls.

The model writes calls as `<tool_call>\\n{"name": …, "arguments": {…}}\\n</tool_call>` (see
services.llm.chat_template). `ToolCallParser` turns that text into OpenAI tool-call deltas as it
streams; the non-streamed response is built from the same deltas, so both always agree.
"""
from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from livecast.services.errors import APIError
from livecast.services.llm.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_HEADER = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*(?=\S)')


@dataclass(slots=True)
class ToolChoice:
    mode: str  # "none" | "auto" | "required" | "named"
    functions: list[dict]  # OpenAI function definitions offered to the model
    name: str | None = None  # the forced function when mode == "named"

    @property
    def constrained(self) -> bool:
        return self.mode in ("required", "named")


def resolve_tool_choice(tools: list[dict] | None, tool_choice) -> ToolChoice:
    functions = [t["function"] for t in tools or []]
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: function names must be unique", param="tools")
    if tool_choice is None:
        tool_choice = "auto" if functions else "none"
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise APIError(400, f"tool_choice names function {name!r}, which is not in tools", param="tool_choice")
        return ToolChoice("named", functions, name)
    if tool_choice not in ("none", "auto", "required"):
        raise APIError(400, f"tool_choice must be none, auto, required or a named function, got {tool_choice!r}",
                       param="tool_choice")
    if tool_choice != "none" and not functions:
        raise APIError(400, f"tool_choice {tool_choice!r} needs tools", param="tool_choice")
    return ToolChoice(tool_choice, functions)


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str
    id: str | None = None  # id and name come with a call's first delta only
    name: str | None = None

    def to_openai(self) -> dict:
        out: dict = {"index": self.index, "function": {"arguments": self.arguments}}
        if self.id is not None:
            out.update(id=self.id, type="function")
            out["function"]["name"] = self.name
        return out


class ToolCallParser:
    """Incremental content / tool-call splitter for one choice.

    `stream_arguments` (for grammar-constrained output, which is always well formed) sends a
    call's id and name as soon as they are known and its arguments as they grow; otherwise a
    call is sent whole once it closes and validates, and anything invalid stays content.
    `keep_content=False` drops text outside calls (the separators of constrained output).
    """

    def __init__(self, names: list[str], stream_arguments: bool, keep_content: bool = True) -> None:
        self.names, self.stream_arguments, self.keep_content = set(names), stream_arguments, keep_content
        self.buffer = ""
        self.in_call = False
        self.num_calls = 0
        self._args_start = -1  # where the open call's arguments begin in `buffer`, once its header is sent
        self._args_sent = 0

    def feed(self, text: str, final: bool = False) -> tuple[str, list[ToolCallDelta]]:
        self.buffer += text
        content, deltas = "", []
        while True:
            if not self.in_call:
                start = self.buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = 0 if final else _partial_suffix(self.buffer, TOOL_CALL_OPEN)
                    content += self.buffer[:len(self.buffer) - keep]
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    break
                content += self.buffer[:start]
                self.buffer, self.in_call, self._args_start = self.buffer[start + len(TOOL_CALL_OPEN):], True, -1
                continue
            end = self.buffer.find(TOOL_CALL_CLOSE)
            body = self.buffer[:end] if end >= 0 else self.buffer
            if self.stream_arguments:
                deltas.extend(self._stream_open_call(body))
            if end < 0 and not final:
                break
            # the call closed, or the output ended inside it
            self.buffer = self.buffer[end + len(TOOL_CALL_CLOSE):] if end >= 0 else ""
            self.in_call = False
            call = self._close_call(body)
            if call is None:
                content += TOOL_CALL_OPEN + body + (TOOL_CALL_CLOSE if end >= 0 else "")
            elif call.arguments or call.id is not None:
                deltas.append(call)
            if end < 0:
                break
        return (content if self.keep_content else ""), deltas

    def _stream_open_call(self, body: str) -> list[ToolCallDelta]:
        deltas = []
        if self._args_start < 0:
            header = _HEADER.match(body)
            if header is None or json.loads(header.group(1)) not in self.names:
                return deltas
            self._args_start = self._args_sent = header.end()
            deltas.append(ToolCallDelta(self.num_calls, "", _call_id(), json.loads(header.group(1))))
            self.num_calls += 1
        # hold back from the last "}": it may close the call object rather than the arguments
        upto = body.rfind("}")
        if upto > self._args_sent:
            deltas.append(ToolCallDelta(self.num_calls - 1, body[self._args_sent:upto]))
            self._args_sent = upto
        return deltas

    def _close_call(self, body: str) -> ToolCallDelta | None:
        """The rest of a finished call: the remaining arguments of a streamed one, or all of it."""
        if self._args_start >= 0:
            tail = body.rstrip()
            tail = tail[:-1] if tail.endswith("}") else tail  # the call object's own closing brace
            return ToolCallDelta(self.num_calls - 1, tail[self._args_sent:].rstrip())
        try:
            call = json.loads(body)
        except ValueError:
            return None
        if not isinstance(call, dict) or call.get("name") not in self.names:
            return None
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        header = _HEADER.match(body)
        raw = body.rstrip()[:-1][header.end():].rstrip() if header else ""
        if not header or _loads(raw) != arguments:
            raw = json.dumps(arguments, ensure_ascii=False)
        self.num_calls += 1
        return ToolCallDelta(self.num_calls - 1, raw, _call_id(), call["name"])


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
