"""One remote MCP server, as the `mcp` SDK reaches it: list its tools, call one.

Each operation opens its own session (connect, initialize, one request, close): a response's
calls are few, and nothing stays open between responses. Streamable HTTP is tried first and SSE
(older servers) when it cannot connect; a URL ending in `/sse` goes to SSE directly. Everything —
connecting, the fallback, the request — shares one deadline (`McpPolicy.timeout_s`), so a server
that hangs costs one timeout, never the response. Every failure becomes `McpFailure`, holding the
`error` object an `mcp_call` carries (OpenAI's MCPToolCallError: `mcp_protocol_error`,
`mcp_tool_execution_error` or `http_error`); its message never includes the request's headers.
"""
from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from livecast.services.errors import APIError

MAX_LISTED_TOOLS = 128
TIMEOUT_CODE = -32001  # the code the SDK gives a request that timed out
INTERNAL_CODE = -32603  # JSON-RPC "internal error": the server's answer could not be used


@dataclass(slots=True, frozen=True)
class McpPolicy:
    """What the agents room allows (AgentsConfig.mcp_*): empty `allowed_hosts` turns the tool off."""
    allowed_hosts: frozenset[str]
    timeout_s: float
    max_output_bytes: int

    def check_url(self, url, param: str) -> None:
        """400 naming `param` for a URL this server may not reach."""
        if not self.allowed_hosts:
            raise APIError(400, f"{param}: remote MCP servers are off on this server (start it with "
                                f"--mcp-allowed-hosts HOST,...)", param=param, code="mcp_disabled")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise APIError(400, f"{param} must be an http(s) URL", param=param)
        host = parts.hostname.lower()
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise APIError(400, f"{param} has an invalid port", param=param) from None
        if "*" not in self.allowed_hosts and not {host, f"{host}:{port}"} & self.allowed_hosts:
            raise APIError(400, f"{param}: host {host!r} is not in this server's --mcp-allowed-hosts", param=param,
                           code="mcp_host_not_allowed")


class McpFailure(Exception):
    def __init__(self, error: dict) -> None:
        super().__init__(error.get("message") or "the tool failed")
        self.error = error  # an MCPToolCallError object


async def list_tools(url: str, headers: dict[str, str], policy: McpPolicy) -> list[dict]:
    """The server's tools as `mcp_list_tools.tools` entries (name, description, input_schema, annotations)."""
    async def op(session: ClientSession) -> list[dict]:
        tools, cursor = [], None
        while len(tools) < MAX_LISTED_TOOLS:
            page = await session.list_tools(params=mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools += page.tools
            cursor = page.next_cursor
            if not cursor:
                break
        return [{"name": t.name, "description": t.description, "input_schema": t.input_schema,
                 "annotations": t.annotations.model_dump(by_alias=True, exclude_none=True) if t.annotations else None}
                for t in tools[:MAX_LISTED_TOOLS]]

    tools = await _run(url, headers, policy, op)
    size = len(json.dumps(tools))
    if size > policy.max_output_bytes:
        raise McpFailure(_protocol_error(INTERNAL_CODE, f"the server's tool list is {size} bytes, over this "
                                                        f"server's cap of {policy.max_output_bytes}"))
    return tools


async def call_tool(url: str, headers: dict[str, str], policy: McpPolicy, name: str, arguments: dict) -> str:
    """The tool's output (its text content, other content as JSON), cut to `max_output_bytes`;
    McpFailure with an `mcp_tool_execution_error` when the tool reports an error."""
    async def op(session: ClientSession):
        return await session.call_tool(name, arguments)

    result = await _run(url, headers, policy, op)
    blocks = [b.model_dump(mode="json", exclude_none=True) for b in result.content]
    if result.is_error:
        raise McpFailure({"type": "mcp_tool_execution_error", "content": blocks})
    text = "\n".join(b["text"] if b.get("type") == "text" else json.dumps(b) for b in blocks)
    if not blocks and result.structured_content is not None:
        text = json.dumps(result.structured_content)
    raw = text.encode()
    if len(raw) > policy.max_output_bytes:
        text = raw[:policy.max_output_bytes].decode(errors="ignore") + (
            f"\n[cut: the output was {len(raw)} bytes; this server keeps {policy.max_output_bytes}]")
    return text


def _protocol_error(code: int, message: str) -> dict:
    return {"type": "mcp_protocol_error", "code": code, "message": message}


async def _run(url: str, headers: dict[str, str], policy: McpPolicy,
               op: Callable[[ClientSession], Awaitable[Any]]):
    """`op` on a fresh session, within the policy's deadline; every failure as McpFailure."""
    transports = ["sse"] if urlsplit(url).path.rstrip("/").endswith("/sse") else ["streamable_http", "sse"]
    try:
        with anyio.fail_after(policy.timeout_s):
            for transport in transports:
                connected = False
                try:
                    async with _session(url, headers, policy.timeout_s, transport) as session:
                        connected = True  # from here on a failure is the server's answer: no second try
                        return await op(session)
                except Exception:
                    if connected or transport == transports[-1]:
                        raise
    except McpFailure:
        raise
    except TimeoutError:
        raise McpFailure(_protocol_error(TIMEOUT_CODE, f"the MCP server did not answer within "
                                                       f"{policy.timeout_s:g} s")) from None
    except Exception as exc:
        raise McpFailure(_describe(_leaf(exc))) from None


@asynccontextmanager
async def _session(url: str, headers: dict[str, str], timeout_s: float, transport: str) -> AsyncIterator[ClientSession]:
    async with httpx2.AsyncClient(headers=headers, timeout=timeout_s) as http:
        if transport == "sse":
            streams = sse_client(url, headers=headers, timeout=timeout_s, sse_read_timeout=timeout_s)
        else:
            streams = streamable_http_client(url, http_client=http)
        async with streams as (read, write, *_):
            async with ClientSession(read, write, read_timeout_seconds=timeout_s) as session:
                await session.initialize()
                yield session


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _describe(exc: BaseException) -> dict:
    if isinstance(exc, McpFailure):
        return exc.error
    if isinstance(exc, MCPError):
        code, message = exc.error.code, exc.error.message
        if code == TIMEOUT_CODE or "timed out" in message.lower():
            return _protocol_error(TIMEOUT_CODE, f"the MCP server did not answer in time: {message}")
        return _protocol_error(code, f"the MCP server answered with an error: {message}")
    if isinstance(exc, httpx2.HTTPStatusError):
        return {"type": "http_error", "code": exc.response.status_code,
                "message": f"the MCP server answered HTTP {exc.response.status_code}"}
    if isinstance(exc, (TimeoutError, httpx2.TimeoutException)):
        return _protocol_error(TIMEOUT_CODE, "the MCP server did not answer in time")
    if isinstance(exc, httpx2.HTTPError):
        return {"type": "http_error", "code": 502, "message": f"could not reach the MCP server: {type(exc).__name__}"}
    return _protocol_error(INTERNAL_CODE, f"the MCP server's answer could not be used: {type(exc).__name__}: "
                                          f"{str(exc)[:300]}")
