"""Function calling and structured output: grammar-constrained decoding checked with jsonschema."""
from __future__ import annotations

import json
import random

import jsonschema
import openai
import pytest

from livecast.services.llm.chat_template import render_chat
from livecast.services.llm.function_calls import ToolCallParser

WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 7},
                          "unit": {"type": "string", "enum": ["C", "F"]}},
           "required": ["city", "days", "unit"]}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}}, "required": ["zone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather forecast",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
ASK = [{"role": "user", "content": "What's the weather in Paris for 3 days?"}]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def _named(client, **kwargs):
    return client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, temperature=0, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, **kwargs)


def test_named_tool_call_arguments_match_schema(client):
    r = _named(client)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)


def test_streamed_tool_call_deltas_assemble_to_the_same_call(client):
    plain = _named(client).choices[0].message.tool_calls[0]
    calls: dict[int, dict] = {}
    finish = None
    for chunk in _named(client, stream=True):
        for choice in chunk.choices:
            assert not choice.delta.content
            finish = choice.finish_reason or finish
            for d in choice.delta.tool_calls or []:
                entry = calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "arguments": ""})
                entry["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert calls[0]["arguments"] == plain.function.arguments


def test_required_tool_choice_calls_offered_functions(client):
    r = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
                                       temperature=0, max_tokens=300, parallel_tool_calls=False)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and len(calls) == 1
    jsonschema.validate(json.loads(calls[0].function.arguments), SCHEMAS[calls[0].function.name])


def test_tool_result_follow_up_turn(client, http):
    call = _named(client).choices[0].message.tool_calls[0]
    messages = ASK + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"forecast": "sunny", "high": 24}'}]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    rendered = http.post("/tokenize", json={"messages": messages, "tools": TOOLS}).json()
    assert r.usage.prompt_tokens == rendered["count"]
    prompt = http.post("/detokenize", json={"tokens": rendered["tokens"]}).json()["prompt"]
    assert '<tool_response>\n{"forecast": "sunny", "high": 24}\n</tool_response>' in prompt
    assert f'<tool_call>\n{{"name": "get_weather", "arguments": {call.function.arguments}}}\n</tool_call>' in prompt
    assert '"name": "get_time"' in prompt  # the tools are in the system prompt


def test_tool_choice_none_hides_tools(client):
    with_tools = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="none",
                                                max_tokens=4, temperature=0)
    without = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, temperature=0)
    assert with_tools.usage.prompt_tokens == without.usage.prompt_tokens
    assert with_tools.choices[0].message.tool_calls is None


def test_json_schema_response_format(client):
    schema = {"type": "object",
              "properties": {"name": {"type": "string", "maxLength": 12},
                             "age": {"type": "integer", "minimum": 0, "maximum": 120},
                             "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                                      "maxItems": 3},
                             "active": {"type": "boolean"}},
              "required": ["name", "age", "tags", "active"], "additionalProperties": False}
    for stream in (False, True):
        kwargs = dict(model="tiny", messages=ASK, temperature=0, max_tokens=200,
                      response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                stream=True, **kwargs) if c.choices)
        else:
            r = client.chat.completions.create(**kwargs)
            assert r.choices[0].finish_reason == "stop"
            text = r.choices[0].message.content
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("body", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
    {"response_format": {"type": "json_schema"}},
    {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "missing"}}},
    {"tool_choice": "required"},
])
def test_bad_structured_requests_are_400(client, body):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, **body)
    assert err.value.status_code == 400 and err.value.body["message"]


# -- auto mode: parsing free text (the random test model never writes a call on its own) ---------
AUTO_TEXTS = [
    'Let me check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>',
    '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>\n'
    '<tool_call>\n{"arguments": {"city": "Tokyo"}, "name": "get_weather"}\n</tool_call>',
    'No call, just a < sign and a <tool_ fragment.',
    '<tool_call>\n{"name": "unknown_fn", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
]


def _parse(text: str, stream_arguments: bool, cut) -> tuple[str, list]:
    parser = ToolCallParser(["get_weather", "get_time"], stream_arguments)
    content, calls = "", {}
    pieces, i = [], 0
    while i < len(text):
        n = cut()
        pieces.append(text[i:i + n])
        i += n
    for k, piece in enumerate(pieces):
        c, deltas = parser.feed(piece, final=k == len(pieces) - 1)
        content += c
        for d in deltas:
            entry = calls.setdefault(d.index, [d.name, ""])
            entry[1] += d.arguments
    return content, list(calls.values())


@pytest.mark.parametrize("text", AUTO_TEXTS)
@pytest.mark.parametrize("stream_arguments", [False, True])
def test_tool_call_parser_is_independent_of_chunking(text, stream_arguments):
    whole = _parse(text, stream_arguments, lambda: len(text))
    rng = random.Random(0)
    for _ in range(30):
        assert _parse(text, stream_arguments, lambda: rng.randint(1, 5)) == whole


def test_auto_parsing_results():
    content, calls = _parse(AUTO_TEXTS[0], False, lambda: 3)
    assert content == "Let me check. " and calls == [["get_weather", '{"city": "Paris", "days": 3}']]
    content, calls = _parse(AUTO_TEXTS[1], False, lambda: 3)
    assert content == "\n" and [c[0] for c in calls] == ["get_time", "get_weather"]
    assert json.loads(calls[1][1]) == {"city": "Tokyo"}
    for text in AUTO_TEXTS[2:]:  # no valid call: everything stays content
        assert _parse(text, False, lambda: 3) == (text, [])


def test_chat_template_renders_tool_turns():
    from transformers import AutoTokenizer

    from livecast.engine.model_loader import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))
    messages = ASK + [
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                              "function": {"name": "get_time", "arguments": '{"zone": "UTC"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12:00"},
        {"role": "tool", "tool_call_id": "c2", "content": "13:00"}]
    text = render_chat(tokenizer, messages, TOOLS)
    assert text.startswith("<|im_start|>system\n# Tools")
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n'
            '</tool_call><|im_end|>') in text
    assert ("<|im_start|>user\n<tool_response>\n12:00\n</tool_response>\n<tool_response>\n13:00\n"
            "</tool_response><|im_end|>") in text
    assert text.endswith("<|im_start|>assistant\n")
