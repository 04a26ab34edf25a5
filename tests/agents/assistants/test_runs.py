"""Assistants v2 with the official client: CRUD, create_and_poll through requires_action and
submit_tool_outputs to completed, streamed runs, cancel, and errors."""
from __future__ import annotations

import json
import warnings

import jsonschema
import openai
import pytest

from tests.agents.conftest import ANSWER, WEATHER

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FUNCTION = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                             "parameters": WEATHER}}
ANSWER_FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER}}


@pytest.fixture(scope="module")
def assistant(client):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return client.beta.assistants.create(model="tiny", name="weather", instructions="You report the weather.",
                                             tools=[FUNCTION], response_format=ANSWER_FORMAT)


def test_assistant_thread_and_message_crud(client, assistant):
    beta = client.beta
    assert beta.assistants.retrieve(assistant.id).tools[0].function.name == "get_weather"
    renamed = beta.assistants.update(assistant.id, name="forecaster", metadata={"v": "2"})
    assert renamed.name == "forecaster" and renamed.instructions == "You report the weather."
    assert assistant.id in [a.id for a in beta.assistants.list(limit=100)]
    thread = beta.threads.create(messages=[{"role": "user", "content": "hello"}], metadata={"user": "ada"})
    assert beta.threads.retrieve(thread.id).metadata == {"user": "ada"}
    assert beta.threads.update(thread.id, metadata={"user": "bob"}).metadata == {"user": "bob"}
    second = beta.threads.messages.create(thread.id, role="user", content=[{"type": "text", "text": "again"}])
    listed = beta.threads.messages.list(thread.id, order="asc").data
    assert [m.content[0].text.value for m in listed] == ["hello", "again"]
    assert beta.threads.messages.retrieve(second.id, thread_id=thread.id).content[0].text.value == "again"
    assert beta.threads.messages.update(second.id, thread_id=thread.id, metadata={"a": "b"}).metadata == {"a": "b"}
    assert beta.threads.messages.delete(second.id, thread_id=thread.id).deleted
    assert len(beta.threads.messages.list(thread.id).data) == 1
    assert beta.threads.delete(thread.id).deleted
    with pytest.raises(openai.NotFoundError, match=thread.id):
        beta.threads.retrieve(thread.id)
    temp = beta.assistants.create(model="tiny")
    assert beta.assistants.delete(temp.id).deleted
    with pytest.raises(openai.NotFoundError):
        beta.assistants.retrieve(temp.id)


def test_create_and_poll_function_tool_to_completed(client, assistant, prompts):
    runs = client.beta.threads.runs
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather in Oslo?"}])
    run = runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, tool_choice="required",
                               parallel_tool_calls=False, poll_interval_ms=50)
    assert run.status == "requires_action", run.last_error
    [call] = run.required_action.submit_tool_outputs.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    assert "You report the weather." in prompts[-1] and "Weather in Oslo?" in prompts[-1]

    run = runs.submit_tool_outputs_and_poll(thread_id=thread.id, run_id=run.id, poll_interval_ms=50,
                                            tool_outputs=[{"tool_call_id": call.id, "output": "snow, -3 C"}])
    assert run.status == "completed", run.last_error
    assert run.usage.prompt_tokens > 0 and run.usage.completion_tokens > 0 and run.completed_at
    assert "<tool_response>\nsnow, -3 C\n</tool_response>" in prompts[-1]
    messages = client.beta.threads.messages.list(thread.id, order="asc").data
    assert [m.role for m in messages] == ["user", "assistant"] and messages[1].run_id == run.id
    assert json.loads(messages[1].content[0].text.value)["answer"] in ("yes", "no", "maybe")
    steps = runs.steps.list(run_id=run.id, thread_id=thread.id, order="asc").data
    assert [(s.type, s.status) for s in steps] == [("tool_calls", "completed"), ("message_creation", "completed")]
    assert steps[0].step_details.tool_calls[0].function.output == "snow, -3 C"
    assert steps[1].step_details.message_creation.message_id == messages[1].id
    assert runs.steps.retrieve(steps[0].id, thread_id=thread.id, run_id=run.id).id == steps[0].id
    assert [r.id for r in runs.list(thread_id=thread.id)] == [run.id]


def test_streamed_run_events(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Is it warm?"}])
    events = list(client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, stream=True,
                                                  tool_choice="none"))
    kinds = [e.event for e in events]
    assert kinds[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert kinds[3:7] == ["thread.run.step.created", "thread.run.step.in_progress", "thread.message.created",
                          "thread.message.in_progress"]
    assert kinds[-3:] == ["thread.message.completed", "thread.run.step.completed", "thread.run.completed"]
    text = "".join(e.data.delta.content[0].text.value for e in events if e.event == "thread.message.delta")
    assert text == events[-3].data.content[0].text.value
    run = client.beta.threads.runs.retrieve(events[0].data.id, thread_id=thread.id)
    assert run.status == "completed"
    assert client.beta.threads.messages.list(thread.id).data[0].content[0].text.value == text


def test_stream_helper_submits_tool_outputs(client, assistant):
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "Weather in Lima?"}])
    with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id, tool_choice="required",
                                         parallel_tool_calls=False) as stream:
        stream.until_done()
        run = stream.current_run
    assert run.status == "requires_action"
    call = run.required_action.submit_tool_outputs.tool_calls[0]
    with client.beta.threads.runs.submit_tool_outputs_stream(thread_id=thread.id, run_id=run.id, tool_outputs=[
            {"tool_call_id": call.id, "output": "warm"}]) as stream:
        text = "".join(stream.text_deltas)
        final = stream.get_final_run()
    assert final.status == "completed" and json.loads(text)["answer"] in ("yes", "no", "maybe")


def test_run_cancel_and_errors(client, assistant, server):
    runs = client.beta.threads.runs
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "talk"}])
    with pytest.raises(openai.NotFoundError, match="asst_missing"):
        runs.create(thread_id=thread.id, assistant_id="asst_missing")
    run = runs.create(thread_id=thread.id, assistant_id=assistant.id, response_format="auto", tool_choice="none",
                      max_completion_tokens=900)
    with pytest.raises(openai.BadRequestError, match="active run"):
        runs.create(thread_id=thread.id, assistant_id=assistant.id)
    cancelled = runs.cancel(run.id, thread_id=thread.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    server.wait_idle()
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        runs.cancel(run.id, thread_id=thread.id)
    with pytest.raises(openai.BadRequestError, match="do not accept tool outputs"):
        runs.submit_tool_outputs(run.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_x", "output": ""}])
    waiting = runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id, tool_choice="required",
                                   parallel_tool_calls=False, poll_interval_ms=50)
    with pytest.raises(openai.BadRequestError, match="call_wrong"):
        runs.submit_tool_outputs(waiting.id, thread_id=thread.id, tool_outputs=[{"tool_call_id": "call_wrong"}])
    assert runs.cancel(waiting.id, thread_id=thread.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as e:
        client.beta.assistants.create(model="tiny", tools=[{"type": "browser"}])
    assert e.value.body["param"] == "tools[0].type"
