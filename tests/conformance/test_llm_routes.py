"""Models, chat completions, completions and embeddings: every body and stream chunk against OpenAI's
document, strictly (no null where it has none)."""
from __future__ import annotations

import base64

from tests.conformance import openapi

USER = [{"role": "user", "content": "Say hi."}]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "the weather of a city",
                                                 "parameters": {"type": "object", "properties": {
                                                     "city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                                                     "required": ["city"], "additionalProperties": False}}}
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}


def test_models(api):
    listed = api.get("/v1/models")
    assert listed["data"][0]["id"] == "tiny"
    api.get("/v1/models/tiny")


def test_chat_plain_and_n_and_logprobs(api):
    r = api.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_completion_tokens": 8})
    assert r["object"] == "chat.completion" and r["choices"][0]["message"]["role"] == "assistant"
    r = api.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_completion_tokens": 4, "n": 2,
                                          "logprobs": True, "top_logprobs": 2, "seed": 1})
    assert len(r["choices"]) == 2 and r["choices"][0]["logprobs"]["content"]


def test_chat_tools_and_json_schema(api):
    r = api.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "tools": [WEATHER_TOOL],
                                          "tool_choice": "required", "max_completion_tokens": 40})
    [call] = r["choices"][0]["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    r = api.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_completion_tokens": 40,
                                          "response_format": {"type": "json_schema", "json_schema": {
                                              "name": "answer", "schema": ANSWER, "strict": True}}})
    assert r["choices"][0]["message"]["content"].startswith("{")


def test_chat_streaming_with_usage(api):
    chunks = api.stream("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_completion_tokens": 6,
                                                 "stream": True, "stream_options": {"include_usage": True}})
    assert chunks[-1]["usage"]["completion_tokens"] >= 1 and chunks[-1]["choices"] == []
    chunks = api.stream("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_completion_tokens": 40,
                                                 "stream": True, "tools": [WEATHER_TOOL], "tool_choice": "required"})
    assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)


def test_completions(api):
    r = api.post("/v1/completions", {"model": "tiny", "prompt": "Once", "max_tokens": 6, "logprobs": 2, "n": 2})
    assert r["object"] == "text_completion" and len(r["choices"]) == 2


def test_embeddings_float_and_base64(api):
    r = api.post("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["hello", "world"]})
    assert len(r["data"]) == 2 and len(r["data"][0]["embedding"]) == 384
    # base64: OpenAI's clients ask for it by default and decode it, though the document types the
    # embedding as an array of numbers only; the string is checked by decoding it, not by the schema
    raw = api.http.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "hello",
                                                "encoding_format": "base64"}).json()
    assert len(base64.b64decode(raw["data"][0]["embedding"])) == 384 * 4
    raw["data"][0]["embedding"] = [0.0] * 384
    assert openapi.errors(openapi.response_schema("POST", "/v1/embeddings", 200), raw) == []


def test_stored_chat_completions(api):
    """`store: true`, then list (model and metadata filters, after, limit, order), retrieve, update,
    messages and delete."""
    made = [api.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_completion_tokens": 4,
                                              "store": True, "metadata": {"run": "conformance", "i": str(i)}})
            for i in range(3)]
    streamed = api.stream("/v1/chat/completions", {
        "model": "tiny", "max_completion_tokens": 4, "stream": True, "store": True, "metadata": {"i": "s"},
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": [{"type": "text", "text": "Say hi."}]}]})
    assert api.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "max_completion_tokens": 4})
    listed = api.get("/v1/chat/completions", params={"metadata[run]": "conformance"})
    assert [c["id"] for c in listed["data"]] == [c["id"] for c in made]  # oldest first; the unstored one absent
    page = api.get("/v1/chat/completions", params={"metadata[run]": "conformance", "limit": 1,
                                                    "after": made[0]["id"], "order": "asc"})
    assert [c["id"] for c in page["data"]] == [made[1]["id"]] and page["has_more"] is True
    assert api.get("/v1/chat/completions", params={"model": "other"})["data"] == []
    assert [c["id"] for c in api.get("/v1/chat/completions", params={"order": "desc", "limit": 2})["data"]] == \
        [streamed[0]["id"], made[2]["id"]]
    stored = api.get(f"/v1/chat/completions/{made[0]['id']}")
    assert stored["choices"] == made[0]["choices"] and stored["metadata"] == {"run": "conformance", "i": "0"}
    assert api.post(f"/v1/chat/completions/{made[0]['id']}", {"metadata": {"k": "v"}})["metadata"] == {"k": "v"}
    kept = api.get(f"/v1/chat/completions/{streamed[0]['id']}")
    assert kept["choices"][0]["message"]["content"] == "".join(
        c["choices"][0]["delta"].get("content") or "" for c in streamed if c["choices"])
    # the messages' roles are the request's (the document types them as assistant messages: docs/API.md)
    messages = api.get(f"/v1/chat/completions/{streamed[0]['id']}/messages", as_documented=_as_assistant)
    assert [(m["role"], m["content"]) for m in messages["data"]] == [("system", "Be brief."), ("user", "Say hi.")]
    assert messages["data"][1]["content_parts"] == [{"type": "text", "text": "Say hi."}]
    assert api.delete(f"/v1/chat/completions/{made[0]['id']}")["deleted"] is True
    assert api.get(f"/v1/chat/completions/{made[0]['id']}", status=404)["code"] == "not_found"


def _as_assistant(page: dict) -> dict:
    return {**page, "data": [{**m, "role": "assistant"} for m in page["data"]]}


def test_completions_streamed(api):
    chunks = api.stream("/v1/completions", {"model": "tiny", "prompt": "Once", "max_tokens": 4, "stream": True,
                                            "stream_options": {"include_usage": True}},
                        schema=openapi.completion_chunk())
    assert chunks[-1]["usage"]["completion_tokens"] == 4
