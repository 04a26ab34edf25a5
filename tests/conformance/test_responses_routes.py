"""Responses (plain, streamed, chained, a function round trip, file_search, code_interpreter, background,
input items, delete, input_tokens, compact) and Conversations (+ items) against OpenAI's document,
strictly."""
from __future__ import annotations

import time

import httpx
import pytest

from livecast.services.agents.config import AgentsConfig
from livecast.services.sandbox.config import SandboxConfig
from tests.conformance.conftest import Api
from tests.services.conftest import running_server, tiny_settings

ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
DONE = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}}
WEATHER = {"type": "function", "name": "get_weather", "description": "the weather of a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                          "required": ["city"], "additionalProperties": False}}


def test_plain_streamed_and_chained(api):
    first = api.post("/v1/responses", {"model": "tiny", "input": "My name is Ada.", "max_output_tokens": 16,
                                       "user": "ada", "metadata": {"k": "v"}})
    assert first["object"] == "response" and first["output"][0]["type"] == "message"
    events = api.stream("/v1/responses", {"model": "tiny", "input": "Hi", "max_output_tokens": 16, "stream": True})
    assert events[0]["type"] == "response.created" and events[-1]["type"] in ("response.completed",
                                                                               "response.incomplete")
    second = api.post("/v1/responses", {"model": "tiny", "input": "My name?", "previous_response_id": first["id"],
                                        "text": DONE, "max_output_tokens": 32})
    assert second["previous_response_id"] == first["id"] and second["status"] == "completed"
    api.get(f"/v1/responses/{second['id']}")
    items = api.get(f"/v1/responses/{second['id']}/input_items", params={"order": "asc"})
    assert items["data"][0]["type"] == "message"
    assert api.delete(f"/v1/responses/{first['id']}")["deleted"] is True


def test_function_call_round_trip_streamed_and_not(api):
    call = api.post("/v1/responses", {"model": "tiny", "input": "Weather in Paris?", "tools": [WEATHER],
                                      "tool_choice": "required", "max_output_tokens": 40})
    [fc] = [o for o in call["output"] if o["type"] == "function_call"][:1]
    answer = api.post("/v1/responses", {"model": "tiny", "previous_response_id": call["id"], "text": DONE,
                                        "input": [{"type": "function_call_output", "call_id": fc["call_id"],
                                                   "output": "sunny"}], "max_output_tokens": 32, "tools": [WEATHER]})
    assert answer["status"] == "completed"
    events = api.stream("/v1/responses", {"model": "tiny", "input": "Weather in Oslo?", "tools": [WEATHER],
                                          "tool_choice": {"type": "function", "name": "get_weather"},
                                          "max_output_tokens": 40, "stream": True})
    assert "response.function_call_arguments.done" in [e["type"] for e in events]


def test_file_search_tool(api):
    file_id = api.upload("/v1/files", {"file": ("tides.txt", b"Tides are caused by the Moon.")},
                         {"purpose": "assistants"})["id"]
    store = api.post("/v1/vector_stores", {"name": "tides", "file_ids": [file_id]})
    deadline = time.monotonic() + 180
    while api.http.get(f"/v1/vector_stores/{store['id']}").json()["file_counts"]["completed"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    body = {"model": "tiny", "input": "What causes the tides?", "text": DONE, "max_output_tokens": 200,
            "tools": [{"type": "file_search", "vector_store_ids": [store["id"]], "max_num_results": 2}],
            "tool_choice": "required", "parallel_tool_calls": False, "max_tool_calls": 1,
            "include": ["file_search_call.results"]}
    r = api.post("/v1/responses", body)
    assert r["output"][0]["type"] == "file_search_call" and r["output"][0]["results"]
    events = api.stream("/v1/responses", {**body, "stream": True, "include": []})
    assert "response.file_search_call.completed" in [e["type"] for e in events]


@pytest.fixture(scope="module")
def smol_api(smollm2_path, tmp_path_factory):
    """The real SmolLM2 (a random model never closes the code string of a forced call)."""
    settings = tiny_settings(smollm2_path, agents=AgentsConfig(data_dir=str(tmp_path_factory.mktemp("ci"))),
                             sandbox=SandboxConfig(spares=0, unsafe=True), engine={"max_model_len": 2048})
    with running_server(settings) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        yield Api(http)


def test_code_interpreter_tool(smol_api):
    # one worked call in the context is enough for SmolLM2 to write `print(12 * 34)` (tests/agents/tools)
    example = [{"type": "message", "role": "user", "content": "Print 1 + 1."},
               {"type": "code_interpreter_call", "id": "ci_example", "status": "completed", "code": "print(1 + 1)",
                "container_id": "cntr_example", "outputs": [{"type": "logs", "logs": "2\n"}]},
               {"type": "message", "role": "assistant", "content": "1 + 1 = 2."},
               {"type": "message", "role": "user", "content": "Print 12 * 34."}]
    body = {"model": "tiny", "input": example, "max_output_tokens": 80, "max_tool_calls": 1, "temperature": 0,
            "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}],
            "tool_choice": {"type": "code_interpreter"}}
    r = smol_api.post("/v1/responses", body)
    assert r["output"][0]["type"] == "code_interpreter_call" and r["output"][0]["status"] == "completed", r
    events = smol_api.stream("/v1/responses", {**body, "stream": True})
    assert "response.code_interpreter_call.interpreting" in [e["type"] for e in events]


def test_background_and_cancel(api):
    r = api.post("/v1/responses", {"model": "tiny", "input": "Hi", "background": True, "max_output_tokens": 16})
    assert r["status"] in ("queued", "in_progress", "completed")
    deadline = time.monotonic() + 180
    while api.http.get(f"/v1/responses/{r['id']}").json()["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    api.get(f"/v1/responses/{r['id']}")
    slow = api.post("/v1/responses", {"model": "tiny", "input": "Hi", "background": True, "max_output_tokens": 400})
    assert api.post(f"/v1/responses/{slow['id']}/cancel")["status"] in ("cancelled", "completed", "incomplete")


def test_input_tokens_counts_with_the_chat_template(api, server):
    body = {"model": "tiny", "input": "How many tokens is this?", "instructions": "Be brief."}
    counted = api.post("/v1/responses/input_tokens", body)
    r = api.post("/v1/responses", {**body, "max_output_tokens": 16})
    assert counted == {"object": "response.input_tokens", "input_tokens": r["usage"]["input_tokens"]}
    tools = api.post("/v1/responses/input_tokens", {**body, "tools": [WEATHER]})
    assert tools["input_tokens"] > counted["input_tokens"]  # the tools are in the template's prompt


def test_compact_keeps_the_newest_items_under_the_budget(api):
    turns = [{"type": "message", "role": "user" if i % 2 == 0 else "assistant",
              "content": f"turn {i}: " + "words " * 60} for i in range(12)]
    compacted = api.post("/v1/responses/compact", {"model": "tiny", "input": turns})
    assert compacted["object"] == "response.compaction"
    texts = [item["content"][0]["text"] for item in compacted["output"] if item["type"] == "message"]
    assert texts and texts[-1].startswith("turn 11") and len(texts) < len(turns)
    counted = api.post("/v1/responses/input_tokens", {"model": "tiny", "input": compacted["output"]})
    assert counted["input_tokens"] <= compacted["usage"]["input_tokens"]
    first = api.post("/v1/responses", {"model": "tiny", "input": "short", "max_output_tokens": 16})
    chained = api.post("/v1/responses/compact", {"model": "tiny", "previous_response_id": first["id"]})
    assert chained["output"][0]["content"][0]["text"] == "short"


def test_conversations_and_items(api):
    conv = api.post("/v1/conversations", {"items": [{"type": "message", "role": "system", "content": "Be brief."}],
                                          "metadata": {"user": "ada"}})
    path = f"/v1/conversations/{conv['id']}"
    api.get(path)
    api.post(path, {"metadata": {"topic": "tea"}})
    added = api.post(f"{path}/items", {"items": [{"type": "message", "role": "user", "content": "hi"}]})
    r = api.post("/v1/responses", {"model": "tiny", "conversation": conv["id"], "input": "Tea?", "text": DONE,
                                   "max_output_tokens": 32})
    assert r["status"] == "completed"
    listed = api.get(f"{path}/items", params={"order": "asc"})
    assert [i["type"] for i in listed["data"]][-1] == "message"
    api.get(f"{path}/items/{listed['data'][-1]['id']}")  # the assistant's message, as stored
    api.delete(f"{path}/items/{added['data'][0]['id']}")
    assert api.delete(path)["deleted"] is True


def test_output_token_limit_below_the_documents_floor_is_served(api):
    """The document's floor on max_output_tokens (16) is not enforced: see docs/API.md."""
    r = api.post("/v1/responses", {"model": "tiny", "input": "Hi", "max_output_tokens": 2},
                 below_floor=("max_output_tokens",))
    assert r["max_output_tokens"] == 2 and r["usage"]["output_tokens"] <= 2


def test_the_new_routes_through_the_official_client(server):
    """What OpenAI's Python client makes of the routes added for the document (it parses each answer
    into its own types)."""
    client = server.client()
    counted = client.responses.input_tokens.count(model="tiny", input="Count me.", instructions="Be brief.")
    assert counted.input_tokens > 0
    compacted = client.responses.compact(model="tiny", input=[{"role": "user", "content": "hello"}])
    assert compacted.output[0].type == "message"
    made = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_completion_tokens=2, store=True, metadata={"via": "client"})
    assert [c.id for c in client.chat.completions.list(metadata={"via": "client"})] == [made.id]
    assert [m.content for m in client.chat.completions.messages.list(made.id)] == ["hi"]
    assert client.chat.completions.delete(made.id).deleted
    assistant = client.beta.assistants.create(model="tiny")
    run = client.beta.threads.create_and_run_poll(assistant_id=assistant.id, max_completion_tokens=8,
                                                  thread={"messages": [{"role": "user", "content": "hi"}]},
                                                  poll_interval_ms=50)
    assert run.status in ("completed", "incomplete")
