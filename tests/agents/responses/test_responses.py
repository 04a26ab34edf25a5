"""POST /v1/responses with the official client against the real app: chains, tools, streaming,
background, storage and errors (tiny random Llama: assert on structure, store and prompts)."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.agents.conftest import ANSWER, WEATHER

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
          "parameters": WEATHER}]
DONE = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER}}


def test_two_turn_chain_second_turn_sees_the_first(client, server, prompts):
    first = client.responses.create(model="tiny", input="My name is Ada Lovelace.", instructions="Be brief.",
                                    max_output_tokens=6, temperature=0)
    assert first.status == "incomplete" and first.incomplete_details.reason == "max_output_tokens"
    assert first.usage.output_tokens == 6 and first.usage.input_tokens > 0
    second = client.responses.create(model="tiny", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=6, temperature=0)
    assert second.previous_response_id == first.id
    # only the new input is stored with the second response; the chain comes from the first
    items = client.responses.input_items.list(second.id, order="asc").data
    assert [(i.type, i.role, i.content[0].text) for i in items] == [("message", "user", "What is my name?")]
    assert [i.content[0].text for i in client.responses.input_items.list(first.id).data] == ["My name is Ada Lovelace."]
    # the engine saw turn one (input and answer) before turn two; instructions are not carried over
    seen = prompts[-1]
    assert seen.index("My name is Ada Lovelace.") < seen.index(first.output_text) < seen.index("What is my name?")
    assert "Be brief." in prompts[0] and "Be brief." not in seen
    assert client.responses.retrieve(first.id).output_text == first.output_text


def test_function_tool_round_trip(client, prompts):
    call = client.responses.create(model="tiny", input="Weather in Paris for 2 days?", tools=TOOLS,
                                   tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=40)
    assert call.status == "completed"
    [item] = call.output
    assert item.type == "function_call" and item.name == "get_weather" and item.call_id.startswith("call_")
    jsonschema.validate(json.loads(item.arguments), WEATHER)
    assert "<tools>" in prompts[-1] and "get_weather" in prompts[-1]

    final = client.responses.create(model="tiny", previous_response_id=call.id, tools=TOOLS, text=DONE,
                                    input=[{"type": "function_call_output", "call_id": item.call_id,
                                            "output": "sunny, 24 C"}], max_output_tokens=40)
    assert final.status == "completed"
    assert [o.type for o in final.output] == ["message"]
    assert json.loads(final.output_text)["answer"] in ANSWER["properties"]["answer"]["enum"]
    assert "<tool_response>\nsunny, 24 C\n</tool_response>" in prompts[-1]
    assert '<tool_call>\n{"name": "get_weather", "arguments": ' in prompts[-1]  # the earlier call, replayed


def test_forced_tool_calls_are_always_schema_valid(client):
    tools = TOOLS + [{"type": "function", "name": "set_alarm", "parameters": {
        "type": "object", "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                                         "loud": {"type": "boolean"}}, "required": ["hour", "loud"]}}]
    schemas = {t["name"]: t["parameters"] for t in tools}
    for seed, tool_choice in enumerate(["required", "required", {"type": "function", "name": "get_weather"}]):
        r = client.responses.create(model="tiny", input="do something", tools=tools, tool_choice=tool_choice,
                                    parallel_tool_calls=False, temperature=1.0, max_output_tokens=60,
                                    extra_body={"seed": seed})
        assert r.status == "completed", r.output
        [call] = r.output
        if isinstance(tool_choice, dict):
            assert call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments), schemas[call.name])


def _text_events(events):
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def test_stream_matches_the_plain_response_at_temperature_0(client):
    kwargs = dict(model="tiny", input="Tell me a story.", max_output_tokens=12, temperature=0)
    plain = client.responses.create(**kwargs)
    events = list(client.responses.create(stream=True, **kwargs))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    final = events[-1].response
    assert _text_events(events) == events[-4].text == final.output_text == plain.output_text
    assert final.status == plain.status and final.usage == plain.usage
    assert client.responses.retrieve(final.id).output_text == plain.output_text


def test_streamed_function_call_events(client):
    events = list(client.responses.create(model="tiny", input="Weather?", tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                          max_output_tokens=40, stream=True))
    kinds = [e.type for e in events]
    assert kinds[2] == "response.output_item.added" and events[2].item.type == "function_call"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == done.arguments and done.name == "get_weather"
    jsonschema.validate(json.loads(done.arguments), WEATHER)
    assert kinds[-2:] == ["response.output_item.done", "response.completed"]
    assert events[-1].response.output[0].arguments == done.arguments


async def test_async_client_streams_and_retrieves(server):
    async with server.async_client() as aclient:
        stream = await aclient.responses.create(model="tiny", input="hi", max_output_tokens=5, stream=True)
        events = [e async for e in stream]
        final = events[-1].response
        assert (await aclient.responses.retrieve(final.id)).output_text == _text_events(events)
        page = await aclient.responses.input_items.list(final.id)
        assert [i.content[0].text for i in page.data] == ["hi"]


def test_background_response_can_be_cancelled(client, server):
    r = client.responses.create(model="tiny", input="write forever", background=True, max_output_tokens=900)
    assert r.status == "queued" and r.background
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    server.wait_idle()  # its engine request was aborted and its KV blocks freed
    done = client.responses.create(model="tiny", input="short", background=True, max_output_tokens=3)
    for _ in range(200):
        if client.responses.retrieve(done.id).status not in ("queued", "in_progress"):
            break
        server.wait_idle()
    assert client.responses.retrieve(done.id).status == "incomplete"
    with pytest.raises(openai.BadRequestError, match="Only background responses"):
        client.responses.cancel(client.responses.create(model="tiny", input="x", max_output_tokens=1).id)


def test_a_stream_that_disconnects_is_recorded_cancelled(client, server):
    stream = client.responses.create(model="tiny", input="go on", max_output_tokens=900, stream=True)
    response_id = None
    for event in stream:
        response_id = event.response.id if event.type == "response.created" else response_id
        if event.type == "response.output_text.delta":
            break
    stream.close()
    server.wait_idle()
    assert client.responses.retrieve(response_id).status == "cancelled"


def test_store_false_writes_nothing_and_delete_removes(client, server):
    db = server.app.state.agents.db
    before = db.query_one("SELECT COUNT(*) AS n FROM agent_items")["n"]
    r = client.responses.create(model="tiny", input="ephemeral", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError, match=r.id):
        client.responses.retrieve(r.id)
    assert db.query_one("SELECT COUNT(*) AS n FROM agent_items")["n"] == before
    kept = client.responses.create(model="tiny", input="kept", max_output_tokens=2, metadata={"k": "v"})
    assert client.responses.retrieve(kept.id).metadata == {"k": "v"}
    assert client.responses.delete(kept.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(kept.id)
    assert db.query_one("SELECT COUNT(*) AS n FROM agent_items")["n"] == before


def _error(exc_info) -> dict:
    return exc_info.value.body


def test_bad_input_is_an_openai_shaped_4xx_and_stores_nothing(client, server):
    db = server.app.state.agents.db
    count = lambda: db.query_one("SELECT COUNT(*) AS n FROM agent_responses")["n"]  # noqa: E731
    before = count()
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="tiny", input="x", previous_response_id="resp_nope")
    assert "resp_nope" in _error(e)["message"] and _error(e)["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input=[{"type": "function_call_output", "call_id": "call_x", "output": "1"}])
    assert "call_x" in _error(e)["message"] and _error(e)["param"] == "input[0]"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input=[{"type": "web_search_call", "id": "ws_1"}])
    assert "web_search_call" in _error(e)["message"] and _error(e)["param"] == "input[0].type"
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input=[{"role": "user", "content": [{"type": "input_file"}]}])
    assert "input_file" in _error(e)["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input="x", tools=[{"type": "web_search"}])
    assert _error(e)["param"] == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="not-served", input="x")
    assert count() == before


def test_a_chain_longer_than_the_context_is_a_400_or_truncated(client, server, prompts):
    max_len = server.llm.max_model_len
    long_text = "word " * (max_len // 3)
    r = client.responses.create(model="tiny", input=long_text, max_output_tokens=2)
    r = client.responses.create(model="tiny", input=long_text, previous_response_id=r.id, max_output_tokens=2)
    before = server.app.state.agents.db.query_one("SELECT COUNT(*) AS n FROM agent_responses")["n"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tiny", input=long_text + "tail", previous_response_id=r.id, max_output_tokens=2)
    assert _error(e)["code"] == "context_length_exceeded" and "truncation" in _error(e)["message"]
    assert server.app.state.agents.db.query_one("SELECT COUNT(*) AS n FROM agent_responses")["n"] == before
    ok = client.responses.create(model="tiny", input=long_text + "tail", previous_response_id=r.id,
                                 max_output_tokens=2, truncation="auto")
    assert ok.status == "incomplete" and ok.usage.input_tokens + 2 <= max_len
    assert "tail" in prompts[-1] and prompts[-1].count("word") < 3 * (max_len // 3)  # the oldest turns went
