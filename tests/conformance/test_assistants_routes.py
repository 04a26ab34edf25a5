"""Assistants v2: assistants, threads, messages, runs (+ steps, submit_tool_outputs, stream,
create-and-run) against OpenAI's document, strictly; a run's stream events as AssistantStreamEvent."""
from __future__ import annotations

import time

from tests.conformance.openapi import component

ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
DONE = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER, "strict": True}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "the weather of a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "enum": ["Paris", "Oslo"]}},
                                                "required": ["city"], "additionalProperties": False}}}
STREAM_EVENT = component("AssistantStreamEvent")


def _settled(api, thread_id: str, run_id: str) -> dict:
    deadline = time.monotonic() + 180  # polls unchecked; the settled run is checked
    while api.http.get(f"/v1/threads/{thread_id}/runs/{run_id}").json()["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return api.get(f"/v1/threads/{thread_id}/runs/{run_id}")


def test_assistants_threads_and_messages(api):
    assistant = api.post("/v1/assistants", {"model": "tiny", "name": "helper", "instructions": "Be brief.",
                                            "tools": [WEATHER], "metadata": {"k": "v"}})
    path = f"/v1/assistants/{assistant['id']}"
    api.get(path)
    api.get("/v1/assistants")
    api.post(path, {"name": "renamed"})
    thread = api.post("/v1/threads", {"messages": [{"role": "user", "content": "hi"}]})
    tpath = f"/v1/threads/{thread['id']}"
    api.get(tpath)
    api.post(tpath, {"metadata": {"k": "v"}})
    message = api.post(f"{tpath}/messages", {"role": "user", "content": "more"})
    api.get(f"{tpath}/messages")
    api.get(f"{tpath}/messages/{message['id']}")
    api.post(f"{tpath}/messages/{message['id']}", {"metadata": {"k": "v"}})
    assert api.delete(f"{tpath}/messages/{message['id']}")["deleted"] is True
    assert api.delete(tpath)["deleted"] is True
    assert api.delete(path)["deleted"] is True


def test_run_steps_and_submit_tool_outputs(api):
    assistant = api.post("/v1/assistants", {"model": "tiny", "tools": [WEATHER], "response_format": DONE})
    thread = api.post("/v1/threads", {"messages": [{"role": "user", "content": "Weather in Paris?"}]})
    tpath = f"/v1/threads/{thread['id']}"
    run = api.post(f"{tpath}/runs", {"assistant_id": assistant["id"], "tool_choice": "required",
                                     "max_completion_tokens": 300})
    run = _settled(api, thread["id"], run["id"])
    assert run["status"] == "requires_action", run
    calls = run["required_action"]["submit_tool_outputs"]["tool_calls"]
    api.post(f"{tpath}/runs/{run['id']}/submit_tool_outputs",
             {"tool_outputs": [{"tool_call_id": c["id"], "output": "sunny"} for c in calls]})
    run = _settled(api, thread["id"], run["id"])
    api.get(f"{tpath}/runs")
    api.post(f"{tpath}/runs/{run['id']}", {"metadata": {"k": "v"}})
    steps = api.get(f"{tpath}/runs/{run['id']}/steps")
    assert {s["type"] for s in steps["data"]} >= {"tool_calls"}
    api.get(f"{tpath}/runs/{run['id']}/steps/{steps['data'][0]['id']}")
    api.get(f"{tpath}/messages")


def test_streamed_run_and_cancel(api):
    assistant = api.post("/v1/assistants", {"model": "tiny", "response_format": DONE})
    thread = api.post("/v1/threads", {"messages": [{"role": "user", "content": "Yes or no?"}]})
    events = api.stream(f"/v1/threads/{thread['id']}/runs", {"assistant_id": assistant["id"], "stream": True,
                                                             "max_completion_tokens": 300}, schema=STREAM_EVENT)
    names = [e["event"] for e in events]
    assert names[0] == "thread.run.created" and "thread.message.delta" in names and names[-1] == "thread.run.completed"
    run = api.post(f"/v1/threads/{thread['id']}/runs", {"assistant_id": assistant["id"], "response_format": "auto",
                                                        "max_completion_tokens": 500})
    api.post(f"/v1/threads/{thread['id']}/runs/{run['id']}/cancel")
    assert _settled(api, thread["id"], run["id"])["status"] in ("cancelled", "completed", "incomplete")


def test_create_thread_and_run(api):
    assistant = api.post("/v1/assistants", {"model": "tiny", "response_format": DONE})
    run = api.post("/v1/threads/runs", {"assistant_id": assistant["id"], "max_completion_tokens": 300,
                                        "thread": {"messages": [{"role": "user", "content": "Yes?"}]}})
    assert _settled(api, run["thread_id"], run["id"])["status"] == "completed"
    events = api.stream("/v1/threads/runs", {"assistant_id": assistant["id"], "stream": True,
                                             "thread": {"messages": [{"role": "user", "content": "No?"}]}},
                        schema=STREAM_EVENT)
    assert events[0]["event"] == "thread.created" and events[-1]["event"] == "thread.run.completed"


def test_token_limits_below_the_documents_floor_are_served(api):
    """The document's floor on a run's token limits (256) is not enforced: see docs/API.md."""
    assistant = api.post("/v1/assistants", {"model": "tiny"})
    thread = api.post("/v1/threads", {"messages": [{"role": "user", "content": "hi"}]})
    floor = ("max_completion_tokens", "max_prompt_tokens")
    run = api.post(f"/v1/threads/{thread['id']}/runs", {"assistant_id": assistant["id"], "max_completion_tokens": 24,
                                                        "max_prompt_tokens": 200}, below_floor=floor)
    assert run["max_completion_tokens"] == 24
    deadline = time.monotonic() + 180
    while api.http.get(f"/v1/threads/{thread['id']}/runs/{run['id']}").json()["status"] in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run = api.get(f"/v1/threads/{thread['id']}/runs/{run['id']}", below_floor=floor)
    assert run["status"] == "incomplete" and run["usage"]["completion_tokens"] <= 24
