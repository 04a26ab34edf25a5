"""An Open Responses-style compliance harness against the live server: each case sends what the
Open Responses suite sends for its test id and checks the answer's shape (every body and event is
also checked against OpenAI's document by `api`)."""
from __future__ import annotations

import base64
import time

import pytest

from tests.retrieval.conftest import tiny_pdf

ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
DONE = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}}
WEATHER = {"type": "function", "name": "get_weather", "description": "the weather of a city", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                          "required": ["city"], "additionalProperties": False}}


def _message_text(response: dict) -> str:
    [message] = [o for o in response["output"] if o["type"] == "message"]
    assert message["role"] == "assistant" and message["content"][0]["type"] == "output_text"
    return message["content"][0]["text"]


def basic_response(api):
    r = api.post("/v1/responses", {"model": "tiny", "input": "Say hello.", "text": DONE, "max_output_tokens": 32})
    assert r["status"] == "completed" and _message_text(r) and r["usage"]["output_tokens"] > 0


def streaming_response(api):
    events = api.stream("/v1/responses", {"model": "tiny", "input": "Say hello.", "stream": True, "text": DONE,
                                          "max_output_tokens": 32})
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == _message_text(events[-1]["response"])


def system_prompt(api, prompts):
    r = api.post("/v1/responses", {"model": "tiny", "instructions": "You are a pirate.", "text": DONE,
                                   "input": [{"type": "message", "role": "system", "content": "Answer briefly."},
                                             {"type": "message", "role": "user", "content": "Hi"}],
                                   "max_output_tokens": 32})
    assert r["instructions"] == "You are a pirate." and "You are a pirate." in prompts[-1]
    assert "Answer briefly." in prompts[-1]


def multi_turn(api, prompts):
    r = api.post("/v1/responses", {"model": "tiny", "text": DONE, "max_output_tokens": 32, "input": [
        {"type": "message", "role": "user", "content": "My name is Ada."},
        {"type": "message", "role": "assistant", "content": "Hello Ada."},
        {"type": "message", "role": "user", "content": "What is my name?"}]})
    assert r["status"] == "completed" and "Hello Ada." in prompts[-1]


def tool_calling(api):
    r = api.post("/v1/responses", {"model": "tiny", "input": "Weather in Paris?", "tools": [WEATHER],
                                   "tool_choice": "required", "max_output_tokens": 40})
    call = r["output"][0]
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["call_id"]
    assert call["arguments"].startswith("{")


def function_call_roundtrip(api, prompts):
    r = api.post("/v1/responses", {"model": "tiny", "input": "Weather in Oslo?", "tools": [WEATHER],
                                   "tool_choice": "required", "max_output_tokens": 40})
    call = r["output"][0]
    answer = api.post("/v1/responses", {"model": "tiny", "tools": [WEATHER], "text": DONE, "max_output_tokens": 32,
                                        "input": [{"type": "message", "role": "user", "content": "Weather in Oslo?"},
                                                  {"type": "function_call", "call_id": call["call_id"],
                                                   "name": call["name"], "arguments": call["arguments"]},
                                                  {"type": "function_call_output", "call_id": call["call_id"],
                                                   "output": "sunny, 21 C"}]})
    assert answer["status"] == "completed" and "sunny, 21 C" in prompts[-1]


def image_input(api):
    # a text model: the honest answer is a 400 that names the missing vision support
    pixel = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    error = api.post("/v1/responses", {"model": "tiny", "input": [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "What is in this image?"},
        {"type": "input_image", "image_url": pixel, "detail": "auto"}]}]}, status=400)
    assert "vision" in error["message"] and error["code"] == "unsupported_content"


def file_input(api, prompts):
    data = "data:application/pdf;base64," + base64.b64encode(tiny_pdf("The launch code is 7421")).decode()
    r = api.post("/v1/responses", {"model": "tiny", "text": DONE, "max_output_tokens": 32, "input": [
        {"type": "message", "role": "user", "content": [
            {"type": "input_file", "filename": "memo.pdf", "file_data": data},
            {"type": "input_text", "text": "What is the launch code?"}]}]})
    assert r["status"] == "completed" and "The launch code is 7421" in prompts[-1]
    items = api.get(f"/v1/responses/{r['id']}/input_items")
    assert items["data"][0]["content"][0]["type"] == "input_file"


def previous_response_id(api, prompts):
    first = api.post("/v1/responses", {"model": "tiny", "input": "Remember the word tangerine.", "text": DONE,
                                       "max_output_tokens": 32})
    second = api.post("/v1/responses", {"model": "tiny", "input": "Which word?", "text": DONE,
                                        "previous_response_id": first["id"], "max_output_tokens": 32})
    assert second["previous_response_id"] == first["id"] and "tangerine" in prompts[-1]


def file_search(api, prompts):
    file_id = api.upload("/v1/files", {"file": ("moon.txt", b"The Moon is 384,400 km from the Earth.")},
                         {"purpose": "assistants"})["id"]
    store = api.post("/v1/vector_stores", {"name": "moon", "file_ids": [file_id]})
    deadline = time.monotonic() + 180
    while api.http.get(f"/v1/vector_stores/{store['id']}").json()["file_counts"]["completed"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = api.post("/v1/responses", {"model": "tiny", "input": "How far is the Moon?", "text": DONE,
                                   "tools": [{"type": "file_search", "vector_store_ids": [store["id"]]}],
                                   "tool_choice": "required", "parallel_tool_calls": False, "max_tool_calls": 1,
                                   "max_output_tokens": 400})
    assert [o["type"] for o in r["output"]] == ["file_search_call", "message"], r
    assert "384,400 km" in prompts[-1]


CASES = {"basic-response": basic_response, "streaming-response": streaming_response,
         "system-prompt": system_prompt, "multi-turn": multi_turn, "tool-calling": tool_calling,
         "function-call-roundtrip": function_call_roundtrip, "image-input": image_input, "file-input": file_input,
         "previous-response-id": previous_response_id, "file-search": file_search}


@pytest.fixture
def prompts(server):
    from tests.agents.conftest import PromptRecorder

    recorder = PromptRecorder(server.llm)
    server.llm.open_stream = recorder
    yield recorder.prompts
    del server.llm.open_stream


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_open_responses(case, api, prompts):
    run = CASES[case]
    run(api, prompts) if run.__code__.co_argcount == 2 else run(api)
