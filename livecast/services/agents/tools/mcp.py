"""The `mcp` tool: a remote MCP server's tools, offered to the model as functions named by the
tool's name, run by livecast (services.agents.tools.mcp_client) when the model calls them.

A request's `{"type": "mcp", "server_label", "server_url", "headers", "allowed_tools",
"require_approval"}` becomes an `McpServer` (checked against --mcp-allowed-hosts: a host not
allowed is a 400 naming `tools[i].server_url`). Before the first turn `prepare()` lists each
server's tools — an `mcp_list_tools` output item — unless a response of the
`previous_response_id` chain already listed that label and URL, and runs the calls the client
approved (`mcp_approval_response` input items). The model's calls then become `mcp_call` items
(`output`, or `error` when the call failed), or, where `require_approval` asks for it
(default "always", as in OpenAI's document), an `mcp_approval_request` that ends the response.

Headers (e.g. Authorization) reach the MCP server only: the response, the store and the logs
see the tool spec through `redacted()`.
"""
from __future__ import annotations

import json

from livecast.services.agents.store import new_id
from livecast.services.agents.tools.mcp_client import McpFailure, McpPolicy, call_tool, list_tools
from livecast.services.errors import APIError

REDACTED = "<redacted>"
ITEM_TYPES = ("mcp_list_tools", "mcp_call", "mcp_approval_request", "mcp_approval_response")


def redacted(tool: dict) -> dict:
    """An `mcp` tool spec as it may be shown or stored: header values and `authorization` hidden."""
    out = dict(tool)
    if isinstance(out.get("headers"), dict):
        out["headers"] = dict.fromkeys(out["headers"], REDACTED)
    if out.get("authorization") is not None:
        out["authorization"] = REDACTED
    return out


class McpServer:
    """One `mcp` tool of a request."""

    def __init__(self, label: str, url: str, headers: dict[str, str], allowed, approval, policy: McpPolicy) -> None:
        self.label, self.url, self.headers, self.policy = label, url, headers, policy
        self.allowed, self.approval = allowed, approval  # as sent: checked by from_spec
        self.tools: list[dict] = []  # listed (or reused) by prepare()

    @classmethod
    def from_spec(cls, tool: dict, policy: McpPolicy | None, param: str) -> "McpServer":
        label = tool.get("server_label")
        if not isinstance(label, str) or not label:
            raise APIError(400, f"{param}.server_label is required for an mcp tool", param=f"{param}.server_label")
        if tool.get("connector_id") is not None or tool.get("tunnel_id") is not None:
            raise APIError(400, f"{param}: connectors and tunnels are not served here; give a server_url",
                           param=f"{param}.server_url")
        url = tool.get("server_url")
        if policy is None:
            policy = McpPolicy(frozenset(), 1.0, 1)  # the room without MCP config: off
        policy.check_url(url, f"{param}.server_url")
        headers = tool.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in headers.items()):
            raise APIError(400, f"{param}.headers must be an object of strings", param=f"{param}.headers")
        if isinstance(tool.get("authorization"), str):
            headers = {**headers, "Authorization": f"Bearer {tool['authorization']}"}
        allowed = tool.get("allowed_tools")
        if allowed is not None and not _is_names(allowed) and not _is_filter(allowed):
            raise APIError(400, f"{param}.allowed_tools must be a list of tool names or {{tool_names, read_only}}",
                           param=f"{param}.allowed_tools")
        approval = tool.get("require_approval")
        approval = "always" if approval is None else approval
        if not (approval in ("always", "never") or isinstance(approval, dict) and set(approval) <= {"always", "never"}
                and all(_is_filter(f) for f in approval.values())):
            raise APIError(400, f"{param}.require_approval must be 'always', 'never' or {{always, never}} filters",
                           param=f"{param}.require_approval")
        return cls(label, url, headers, allowed, approval, policy)

    def offers(self, tool: dict) -> bool:
        return self.allowed is None or _matches(self.allowed, tool)

    def needs_approval(self, tool: dict) -> bool:
        if isinstance(self.approval, str):
            return self.approval == "always"
        if "never" in self.approval and _matches(self.approval["never"], tool):
            return False
        return "always" not in self.approval or _matches(self.approval["always"], tool)

    async def call(self, item: dict) -> dict:
        """An `mcp_call` item run: `output`, or `error` and status failed."""
        try:
            arguments = json.loads(item["arguments"] or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            return {**item, "status": "failed", "error": {
                "type": "mcp_protocol_error", "code": -32602, "message": f"the arguments are not a JSON object: {exc}"}}
        try:
            output = await call_tool(self.url, self.headers, self.policy, item["name"], arguments)
        except McpFailure as exc:
            return {**item, "status": "failed", "error": exc.error}
        return {**item, "status": "completed", "output": output}


class McpTool:
    """One listed tool of an McpServer, as the run loop runs built-ins (tools.BuiltinTool)."""
    type = "mcp"
    id_prefix = "mcp"

    def __init__(self, server: McpServer, tool: dict) -> None:
        self.server, self.tool = server, tool
        self.function = {"name": tool["name"], "description": tool.get("description") or "",
                         "parameters": tool.get("input_schema") or {"type": "object"}}

    async def start_item(self, item_id: str, arguments: str) -> dict:
        if self.server.needs_approval(self.tool):  # the loop ends the response on it (RunLoop.events)
            return {"id": new_id("mcpr"), "type": "mcp_approval_request", "server_label": self.server.label,
                    "name": self.tool["name"], "arguments": arguments}
        return call_item(item_id, self.server.label, self.tool["name"], arguments)

    def progress(self, item: dict) -> list[tuple[str, dict]]:
        return arguments_events(item)

    async def call(self, item: dict) -> dict:
        return await self.server.call(item)

    def annotations(self, text: str) -> list[dict]:
        return []


def call_item(item_id: str, label: str, name: str, arguments: str, approval_request_id: str | None = None) -> dict:
    return {"id": item_id, "type": "mcp_call", "status": "in_progress", "server_label": label, "name": name,
            "arguments": arguments, "output": None, "error": None, "approval_request_id": approval_request_id}


def arguments_events(item: dict) -> list[tuple[str, dict]]:
    return [("response.mcp_call_arguments.delta", {"delta": item["arguments"]}),
            ("response.mcp_call_arguments.done", {"arguments": item["arguments"]})]


def listed_in_chain(responses, previous_response_id: str | None) -> dict[tuple[str, str], list[dict]]:
    """(server_label, server_url) -> tools, from the `mcp_list_tools` items of the chain's responses
    (the newest wins); a failed listing is not reused."""
    listed: dict[tuple[str, str], list[dict]] = {}
    while previous_response_id:
        previous = responses.require(previous_response_id, param="previous_response_id")
        urls = {t.get("server_label"): t.get("server_url") for t in previous.get("tools") or []
                if isinstance(t, dict) and t.get("type") == "mcp"}
        for item in previous.get("output") or []:
            if item.get("type") == "mcp_list_tools" and not item.get("error") and item["server_label"] in urls:
                listed.setdefault((item["server_label"], urls[item["server_label"]]), item["tools"])
        previous_response_id = previous.get("previous_response_id")
    return listed


async def prepare(toolset, items: list[dict], listed: dict[tuple[str, str], list[dict]]) -> None:
    """List (or reuse) each server's tools and offer them; run the approved calls. The work done
    goes to `toolset.prelude` as (in-progress item, progress events, finished item)."""
    taken = {f["name"] for f in toolset.functions}
    for server in toolset.mcp:
        tools = listed.get((server.label, server.url))
        if tools is None:
            item = {"id": new_id("mcpl"), "type": "mcp_list_tools", "server_label": server.label, "tools": []}
            try:
                tools = await list_tools(server.url, server.headers, server.policy)
                done = {**item, "tools": tools}
            except McpFailure as exc:
                tools, done = [], {**item, "error": exc.error.get("message") or "listing the tools failed"}
            toolset.prelude.append((item, [], done))
        server.tools = [t for t in tools if server.offers(t)]
        for tool in server.tools:
            if tool["name"] in taken:  # the first tool of a name wins; the model cannot tell two apart
                continue
            taken.add(tool["name"])
            builtin = McpTool(server, tool)
            toolset.builtins[tool["name"]] = builtin
            toolset.functions.append(builtin.function)
    requests = {i["id"]: i for i in items if i.get("type") == "mcp_approval_request"}
    for i, answer in enumerate(items):
        if answer.get("type") != "mcp_approval_response":
            continue
        request = requests.get(answer["approval_request_id"])
        server = next((s for s in toolset.mcp if request and s.label == request["server_label"]), None)
        if request is None or server is None:
            raise APIError(400, f"mcp_approval_response: no mcp_approval_request {answer['approval_request_id']!r} "
                                f"of an mcp tool in this request's tools", param="input",
                           code="invalid_approval_request")
        if any(it.get("type") == "mcp_call" and it.get("approval_request_id") == request["id"] for it in items):
            continue  # already answered and run
        if answer["approve"]:
            item = call_item(new_id("mcp"), server.label, request["name"], request["arguments"], request["id"])
            toolset.prelude.append((item, arguments_events(item), await server.call(item)))


def input_item(item: dict, param: str) -> dict:
    """An MCP item in a request's `input`: an approval answer, or an earlier output item passed back
    (an approval request keeps its id: the answer names it)."""
    kind = item["type"]
    if kind == "mcp_approval_response":
        if not isinstance(item.get("approval_request_id"), str) or not isinstance(item.get("approve"), bool):
            raise APIError(400, f"{param}: an mcp_approval_response needs approval_request_id (a string) and approve "
                                f"(a boolean)", param=param)
        return {"id": new_id("mcpa"), "type": kind, "approval_request_id": item["approval_request_id"],
                "approve": item["approve"], "reason": item.get("reason")}
    for key in ("server_label",) + (("name", "arguments") if kind != "mcp_list_tools" else ()):
        if not isinstance(item.get(key), str):
            raise APIError(400, f"{param}.{key} is required (a string) for an {kind} item", param=f"{param}.{key}")
    if kind == "mcp_approval_request":
        return {**item, "id": item.get("id") if isinstance(item.get("id"), str) else new_id("mcpr")}
    return {**item, "id": new_id("mcp" if kind == "mcp_call" else "mcpl")}


def render(item: dict) -> str:
    """An `mcp_call`'s result as the model reads it."""
    if item.get("error"):
        error = item["error"]
        detail = error.get("message") or json.dumps(error.get("content"), ensure_ascii=False)
        return f"The tool failed: {detail}"
    return item.get("output") or ""


def _is_names(value) -> bool:
    return isinstance(value, list) and all(isinstance(n, str) for n in value)


def _is_filter(value) -> bool:
    return (isinstance(value, dict) and set(value) <= {"tool_names", "read_only"}
            and _is_names(value.get("tool_names", [])) and isinstance(value.get("read_only", False), bool))


def _matches(spec, tool: dict) -> bool:
    """A tool against `allowed_tools` or an approval filter: a list of names, or {tool_names, read_only}."""
    if isinstance(spec, list):
        return tool["name"] in spec
    if "tool_names" in spec and tool["name"] not in spec["tool_names"]:
        return False
    if "read_only" in spec:
        return bool((tool.get("annotations") or {}).get("readOnlyHint")) == spec["read_only"]
    return True
