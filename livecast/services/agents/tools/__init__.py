"""The tools of one request: client functions, and built-in tools that run here, in one registry.

A request's `tools` become a `ToolSet`: the function definitions the model is offered (the
client's functions plus one per built-in tool, e.g. `code_interpreter(code)`), and the built-ins
by the name the model calls them. The run loop executes a built-in call itself and goes on
generating; a call to a client function ends the loop so the client can answer it. A new
built-in registers a factory in `BUILTINS`; the loop does not change.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from livecast.services.agents.tools.code_interpreter import CodeInterpreter
from livecast.services.agents.tools.file_search import FileSearch
from livecast.services.agents.tools.mcp import McpServer
from livecast.services.agents.tools.mcp_client import McpPolicy
from livecast.services.errors import APIError
from livecast.services.llm.function_calls import ToolChoice, resolve_tool_choice

if TYPE_CHECKING:
    from livecast.services.retrieval.service import RetrievalService
    from livecast.services.sandbox.pool import ContainerPool


@dataclass(slots=True, frozen=True)
class ToolRooms:
    """The peer rooms the built-in tools run on, each None where that room is off: the sandbox's
    container pool for the code interpreter, retrieval for file search; `project`: whose vector
    stores and containers a tool may use (None only on the room's own, unscoped copy); `mcp`: what
    remote MCP servers may be reached (None: the mcp tool is off)."""
    containers: ContainerPool | None = None
    retrieval: RetrievalService | None = None
    project: str | None = None
    mcp: McpPolicy | None = None

    def scoped(self, project: str) -> "ToolRooms":
        retrieval = self.retrieval.for_project(project) if self.retrieval is not None else None
        return dataclasses.replace(self, retrieval=retrieval, project=project)


class BuiltinTool(Protocol):
    type: str  # the OpenAI tool type, and the output item is `<type>_call`
    id_prefix: str  # of its output items' ids
    function: dict  # the definition the model sees (its name is what the model calls)

    async def start_item(self, item_id: str, arguments: str) -> dict:
        """The output item, in progress, once the model has written the call (complete in what OpenAI's
        document requires of an in-progress item, e.g. a code call's container)."""

    def progress(self, item: dict) -> list[tuple[str, dict]]:
        """Streaming events (type, fields) between `.in_progress` and running the tool."""

    async def call(self, item: dict) -> dict:
        """Run it: the finished output item (services.agents.responses.items renders its result for the model)."""

    def annotations(self, text: str) -> list[dict]:
        """`output_text` annotations for a message the model wrote after this run's calls (e.g. citations)."""


# tool type -> factory(tool spec as the client sent it, the rooms) -> BuiltinTool
BUILTINS: dict[str, Callable[[dict, ToolRooms], BuiltinTool]] = {"code_interpreter": CodeInterpreter.from_spec,
                                                               "file_search": FileSearch.from_spec}


@dataclass(slots=True)
class ToolSet:
    functions: list[dict] = field(default_factory=list)  # client functions, then built-ins, as the model sees them
    builtins: dict[str, BuiltinTool] = field(default_factory=dict)  # by function name
    mcp: list[McpServer] = field(default_factory=list)  # their tools join functions/builtins in tools.mcp.prepare
    prelude: list[tuple[dict, list, dict]] = field(default_factory=list)  # built-in work done before the first turn

    def choice(self, tool_choice) -> ToolChoice:
        """Responses/Assistants `tool_choice` (a mode, `{"type": "function", "name"}`, `{"type": "function",
        "function": {"name"}}` or `{"type": "<built-in>"}`) resolved over these tools."""
        if tool_choice == "auto" and not self.functions:  # a run's default, on an assistant without tools
            tool_choice = None
        if isinstance(tool_choice, dict):
            kind = tool_choice.get("type")
            if kind == "function":
                name = tool_choice.get("name") or (tool_choice.get("function") or {}).get("name")
            elif kind == "mcp":  # {"type": "mcp", "server_label", "name"}: that server's tool (any, without name)
                return self._mcp_choice(tool_choice)
            elif kind in (b.type for b in self.builtins.values()):
                name = next(n for n, b in self.builtins.items() if b.type == kind)
            else:
                raise APIError(400, f"tool_choice names tool type {kind!r}, which is not in tools", param="tool_choice")
            tool_choice = {"type": "function", "function": {"name": name}}
        return resolve_tool_choice([{"type": "function", "function": f} for f in self.functions], tool_choice)

    def _mcp_choice(self, tool_choice: dict) -> ToolChoice:
        label, name = tool_choice.get("server_label"), tool_choice.get("name")
        offered = [n for n, b in self.builtins.items() if b.type == "mcp" and b.server.label == label]
        if not offered or name is not None and name not in offered:
            raise APIError(400, f"tool_choice names MCP tool {name!r} of server {label!r}, which is not among the "
                                f"listed tools of an mcp tool in tools", param="tool_choice")
        functions = [{"type": "function", "function": f} for f in self.functions]
        if name is None and len(offered) > 1:  # any tool of that server: the others are not offered
            return resolve_tool_choice([f for f in functions if f["function"]["name"] in offered], "required")
        return resolve_tool_choice(functions, {"type": "function", "function": {"name": name or offered[0]}})


def build_toolset(tools: list[dict] | None, rooms: ToolRooms, param: str = "tools", mcp: bool = False) -> ToolSet:
    """`tools` in the Responses (flat) or Assistants (`{"function": {…}}`) shape; `mcp`: remote MCP
    servers allowed (Responses only: an assistant would store their headers)."""
    toolset = ToolSet()
    for i, tool in enumerate(tools or []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            spec = tool.get("function") or {k: v for k, v in tool.items() if k != "type"}
            if not isinstance(spec.get("name"), str) or not spec["name"]:
                raise APIError(400, f"{param}[{i}].name is required for a function tool", param=f"{param}[{i}].name")
            toolset.functions.append({k: v for k, v in spec.items() if v is not None})
        elif kind == "mcp" and mcp:  # its tools are listed later (tools.mcp.prepare)
            toolset.mcp.append(McpServer.from_spec(tool, rooms.mcp, f"{param}[{i}]"))
        elif kind in BUILTINS:
            builtin = BUILTINS[kind](tool, rooms)
            toolset.builtins[builtin.function["name"]] = builtin
        else:
            known = ["function", *BUILTINS, *(["mcp"] if mcp else [])]
            raise APIError(400, f"{param}[{i}].type: unsupported tool type {kind!r}; this server has {known}",
                           param=f"{param}[{i}].type")
    toolset.functions += [b.function for b in toolset.builtins.values()]
    return toolset
