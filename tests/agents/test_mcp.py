"""The Responses `mcp` tool against real MCP servers (the `mcp` SDK's MCPServer, FastMCP in mcp 1.x,
served on 127.0.0.1 in threads), through the live app with the tiny random Llama: a forced
`tool_choice` makes its call deterministic in shape, and grammar-constrained function calling
makes its arguments valid for the tool's input schema; outputs are checked against the arguments
the model wrote. Streamed events and bodies are checked against OpenAI's document."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Literal

import anyio
import openai
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.agents.conftest import ANSWER, agents_settings
from tests.conformance.conftest import Api
from tests.live_server import LiveServer
from tests.services.conftest import running_server

SECRET = "Bearer sk-mcp-secret-7f3a"
TIMEOUT_S = 4.0
WORDS = Literal["hi", "hello", "hey"]  # a closed schema: the tiny random model's string ends at once
DONE = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER}}  # ...and so does its answer


def _mcp_app() -> MCPServer:
    server = MCPServer("calc")
    server.calls = []  # (tool, arguments) as the server received them

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        server.calls.append(("add", {"a": a, "b": b}))
        return a + b

    @server.tool()
    def echo(text: WORDS) -> str:
        """Repeat the text."""
        server.calls.append(("echo", {"text": text}))
        return text

    @server.tool()
    def fail(text: WORDS) -> str:
        """Always fails."""
        raise ValueError("the fail tool failed")

    @server.tool()
    async def slow(text: WORDS) -> str:
        """Never answers in time."""
        await anyio.sleep(TIMEOUT_S * 5)
        return text

    return server


@pytest.fixture(scope="module")
def mcp_server():
    server = _mcp_app()
    http, sse = LiveServer(server.streamable_http_app()).start(), LiveServer(server.sse_app()).start()
    server.url, server.sse_url = f"{http.url}/mcp", f"{sse.url}/sse"
    yield server
    http.stop()
    sse.stop()


@pytest.fixture(scope="module")
def hanging_url():
    """A port that takes connections and never answers a byte."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    sock.close()


async def _liar(request: Request) -> Response:
    """Initializes like an MCP server, then answers tools/list with a list that is not one."""
    if request.method != "POST":
        return Response("not an event stream", media_type="text/plain")
    message = await request.json()
    if "id" not in message:  # a notification
        return Response(status_code=202)
    result = {"tools": "not a list"}
    if message.get("method") == "initialize":
        result = {"protocolVersion": message["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "liar", "version": "1"}}
    return JSONResponse({"jsonrpc": "2.0", "id": message["id"], "result": result})


@pytest.fixture(scope="module")
def lying_url():
    live = LiveServer(Starlette(routes=[Route("/mcp", _liar, methods=["GET", "POST", "DELETE"])])).start()
    yield f"{live.url}/mcp"
    live.stop()


@pytest.fixture(scope="module")
def server(tiny_llama_path, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mcp-store")
    settings = agents_settings(tiny_llama_path, data_dir, mcp_allowed_hosts="127.0.0.1", mcp_timeout_s=TIMEOUT_S)
    with running_server(settings) as s:
        s.data_dir = data_dir
        yield s


def _tool(url: str, **fields) -> dict:
    return {"type": "mcp", "server_label": "calc", "server_url": url, "require_approval": "never", **fields}


def _force(name: str) -> dict:
    return {"type": "mcp", "server_label": "calc", "name": name}


def test_forced_call_lists_the_tools_then_runs_the_call_with_the_official_client(client, mcp_server):
    r = client.responses.create(model="tiny", input="Add 2 and 3.", tools=[_tool(mcp_server.url)],
                                tool_choice=_force("add"), max_tool_calls=1, max_output_tokens=120, text=DONE)
    assert r.status in ("completed", "incomplete"), r.error
    listing, call = r.output[0], r.output[1]
    assert listing.type == "mcp_list_tools" and listing.server_label == "calc" and listing.error is None
    assert {t.name for t in listing.tools} == {"add", "echo", "fail", "slow"}
    assert listing.tools[0].input_schema["type"] == "object"
    assert call.type == "mcp_call" and call.name == "add" and call.server_label == "calc" and call.error is None
    arguments = json.loads(call.arguments)  # grammar-constrained: valid for add's input schema
    assert call.output == str(arguments["a"] + arguments["b"])  # run by the MCP server, not the model
    assert mcp_server.calls[-1] == ("add", arguments)
    # a follow-up in the chain reuses the listed tools: no second mcp_list_tools item, the call still runs
    again = client.responses.create(model="tiny", input="Echo hi.", previous_response_id=r.id,
                                    tools=[_tool(mcp_server.url)], tool_choice=_force("echo"), max_tool_calls=1,
                                    max_output_tokens=120, text=DONE)
    assert [i.type for i in again.output][0] == "mcp_call" and "mcp_list_tools" not in [i.type for i in again.output]
    assert again.output[0].output == json.loads(again.output[0].arguments)["text"]


def test_auto_tool_choice_offers_the_listed_tools(client, mcp_server, prompts):
    r = client.responses.create(model="tiny", input="What is 2 + 3?", max_output_tokens=8,
                                tools=[_tool(mcp_server.url, allowed_tools=["add"])])
    assert r.status in ("completed", "incomplete"), r.error
    assert r.output[0].type == "mcp_list_tools" and r.tool_choice == "auto"
    assert '"add"' in prompts[0] and '"echo"' not in prompts[0]  # allowed_tools filters what the model sees
    for item in r.output[1:]:
        if item.type == "mcp_call":  # the random model may call it or answer
            assert item.name == "add" and item.output == str(sum(json.loads(item.arguments).values()))


def test_approval_request_then_approve_runs_the_call_and_deny_skips_it(client, mcp_server):
    tools = [_tool(mcp_server.url, require_approval="always")]
    asked = client.responses.create(model="tiny", input="Add 2 and 3.", tools=tools, tool_choice=_force("add"),
                                    max_output_tokens=120, text=DONE)
    assert asked.status == "completed", asked.error
    assert [i.type for i in asked.output] == ["mcp_list_tools", "mcp_approval_request"]
    request = asked.output[1]
    assert request.name == "add" and request.server_label == "calc"
    num_calls = len(mcp_server.calls)
    approved = client.responses.create(model="tiny", previous_response_id=asked.id, tools=tools, tool_choice="none",
                                       max_output_tokens=4, input=[{"type": "mcp_approval_response",
                                                                    "approval_request_id": request.id,
                                                                    "approve": True}])
    call = approved.output[0]
    assert call.type == "mcp_call" and call.approval_request_id == request.id and call.arguments == request.arguments
    arguments = json.loads(request.arguments)
    assert call.output == str(arguments["a"] + arguments["b"]) and mcp_server.calls[-1] == ("add", arguments)
    denied = client.responses.create(model="tiny", previous_response_id=asked.id, tools=tools, tool_choice="none",
                                     max_output_tokens=4, input=[{"type": "mcp_approval_response",
                                                                  "approval_request_id": request.id,
                                                                  "approve": False}])
    assert "mcp_call" not in [i.type for i in denied.output] and len(mcp_server.calls) == num_calls + 1
    # an answer to no request is a 400 before anything runs
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="tiny", previous_response_id=asked.id, tools=tools, input=[
            {"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}])


def test_per_tool_approval_filter(client, mcp_server):
    tools = [_tool(mcp_server.url, require_approval={"always": {"tool_names": ["add"]}})]
    asked = client.responses.create(model="tiny", input="Add.", tools=tools, tool_choice=_force("add"),
                                    max_output_tokens=120, text=DONE)
    assert asked.output[-1].type == "mcp_approval_request"
    ran = client.responses.create(model="tiny", input="Echo.", tools=tools, tool_choice=_force("echo"),
                                  max_tool_calls=1, max_output_tokens=120, text=DONE)
    assert ran.output[1].type == "mcp_call" and ran.output[1].error is None


def test_a_failing_tool_is_an_error_item_not_a_failed_response(client, mcp_server):
    r = client.responses.create(model="tiny", input="Fail.", tools=[_tool(mcp_server.url)],
                                tool_choice=_force("fail"), max_tool_calls=1, max_output_tokens=120, text=DONE)
    assert r.status in ("completed", "incomplete"), r.error
    call = r.output[1]
    assert call.type == "mcp_call" and call.status == "failed" and call.output is None
    assert call.error.type == "mcp_tool_execution_error"
    assert "Error executing tool fail" in json.dumps(call.error.content)


def test_a_call_that_hangs_times_out_into_an_error_item(client, mcp_server):
    started = time.monotonic()
    r = client.responses.create(model="tiny", input="Slow.", tools=[_tool(mcp_server.url)],
                                tool_choice=_force("slow"), max_tool_calls=1, max_output_tokens=120, text=DONE)
    assert r.status in ("completed", "incomplete"), r.error
    call = r.output[1]
    assert call.status == "failed" and call.error.type == "mcp_protocol_error" and call.error.code == -32001
    assert time.monotonic() - started < TIMEOUT_S * 4


def test_a_server_that_never_answers_fails_its_listing_only(client, hanging_url):
    r = client.responses.create(model="tiny", input="Hello.", tools=[_tool(hanging_url)], max_output_tokens=4)
    assert r.status in ("completed", "incomplete"), r.error
    listing = r.output[0]
    assert listing.type == "mcp_list_tools" and listing.tools == [] and "did not answer" in listing.error
    assert [i.type for i in r.output[1:]] == ["message"]  # nothing offered; the model answered


def test_a_server_that_lies_fails_its_listing_only(client, lying_url):
    r = client.responses.create(model="tiny", input="Hello.", tools=[_tool(lying_url)], max_output_tokens=4)
    assert r.status in ("completed", "incomplete"), r.error
    assert r.output[0].type == "mcp_list_tools" and r.output[0].tools == [] and r.output[0].error


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client's beta assistants
def test_assistants_refuse_the_mcp_tool(client, mcp_server):
    with pytest.raises(openai.BadRequestError) as exc:
        client.beta.assistants.create(model="tiny", tools=[_tool(mcp_server.url, headers={"Authorization": SECRET})])
    assert exc.value.body["param"] == "tools[0].type"


def test_sse_transport_for_an_sse_url(client, mcp_server):
    r = client.responses.create(model="tiny", input="Echo.", tools=[_tool(mcp_server.sse_url)],
                                tool_choice=_force("echo"), max_tool_calls=1, max_output_tokens=120, text=DONE)
    call = r.output[1]
    assert call.type == "mcp_call" and call.output == json.loads(call.arguments)["text"]


def test_a_host_not_allowed_is_a_400_naming_the_url(client, mcp_server):
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="tiny", input="Hi.", tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object"}},
            _tool("http://example.com/mcp")])
    assert exc.value.body["param"] == "tools[1].server_url"


def test_mcp_is_off_without_allowed_hosts(tiny_llama_path, tmp_path):
    with running_server(agents_settings(tiny_llama_path, tmp_path)) as s, s.client() as c:
        with pytest.raises(openai.BadRequestError) as exc:
            c.responses.create(model="tiny", input="Hi.", tools=[_tool("http://127.0.0.1:9/mcp")])
    assert exc.value.body["param"] == "tools[0].server_url" and exc.value.body["code"] == "mcp_disabled"


def test_headers_reach_the_server_but_are_never_stored(client, server, mcp_server, caplog):
    caplog.set_level("DEBUG")
    tool = _tool(mcp_server.url, headers={"Authorization": SECRET}, authorization="oauth-secret-token")
    r = client.responses.create(model="tiny", input="Add.", tools=[tool], tool_choice=_force("add"),
                                max_tool_calls=1, max_output_tokens=120, text=DONE)
    assert r.output[1].error is None  # the server took the headers
    for shown in (r.model_dump_json(), client.responses.retrieve(r.id).model_dump_json()):
        assert "sk-mcp-secret" not in shown and "oauth-secret-token" not in shown
    assert r.tools[0].headers == {"Authorization": "<redacted>"}
    for path in Path(server.data_dir).rglob("*"):  # the store's files, WAL included
        if path.is_file():
            data = path.read_bytes()
            assert b"sk-mcp-secret" not in data and b"oauth-secret-token" not in data, path
    assert "sk-mcp-secret" not in caplog.text and "oauth-secret-token" not in caplog.text  # nor logged
    assert "HTTP Request: POST" in caplog.text  # (the MCP client's requests were logged, at all)


def test_streamed_events_follow_the_document_in_order(server, mcp_server):
    with server.http() as http:
        events = Api(http).stream("/v1/responses", {
            "model": "tiny", "input": "Add 2 and 3.", "tools": [_tool(mcp_server.url)], "tool_choice": _force("add"),
            "max_tool_calls": 1, "max_output_tokens": 120, "text": DONE, "stream": True})
    types = [e["type"] for e in events]
    assert types[:13] == ["response.created", "response.in_progress",
                          "response.output_item.added", "response.mcp_list_tools.in_progress",
                          "response.mcp_list_tools.completed", "response.output_item.done",
                          "response.output_item.added", "response.mcp_call.in_progress",
                          "response.mcp_call_arguments.delta", "response.mcp_call_arguments.done",
                          "response.mcp_call.completed", "response.output_item.done", types[12]]
    assert types[-1] in ("response.completed", "response.incomplete")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    done = events[11]["item"]
    assert done["type"] == "mcp_call" and done["output"] == str(sum(json.loads(done["arguments"]).values()))
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]][:2] == ["mcp_list_tools", "mcp_call"]


def test_a_failed_call_streams_mcp_call_failed(server, mcp_server):
    with server.http() as http:
        events = Api(http).stream("/v1/responses", {
            "model": "tiny", "input": "Fail.", "tools": [_tool(mcp_server.url)], "tool_choice": _force("fail"),
            "max_tool_calls": 1, "max_output_tokens": 120, "text": DONE, "stream": True})
    types = [e["type"] for e in events]
    assert "response.mcp_call.failed" in types and "response.mcp_call.completed" not in types


def test_approval_request_streams_as_one_item(server, mcp_server):
    with server.http() as http:
        api = Api(http)
        events = api.stream("/v1/responses", {
            "model": "tiny", "input": "Add.", "tools": [_tool(mcp_server.url, require_approval="always")],
            "tool_choice": _force("add"), "max_output_tokens": 120, "text": DONE, "stream": True})
        added = [e["item"]["type"] for e in events if e["type"] == "response.output_item.added"]
        assert added == ["mcp_list_tools", "mcp_approval_request"]
        api.get(f"/v1/responses/{events[-1]['response']['id']}")  # the stored body conforms too
