"""Runs: an assistant on a thread, `queued → in_progress → requires_action → completed | failed |
cancelled | expired | incomplete`, streamed or in the background, resumed by `submit_tool_outputs`.

The context of a stretch is the thread's messages, then this run's steps in order (its messages,
its tool calls and the outputs submitted for them), as Responses items for the shared run loop.
"""
from __future__ import annotations

import asyncio
import copy
import functools
import time
from contextlib import aclosing
from typing import AsyncIterator

from livecast.services.agents.assistants.execution import Event, RunExecution
from livecast.services.agents.assistants.objects import finish, message_object, message_to_item, step_items, text_parts
from livecast.services.agents.assistants.protocol import RunCreate, SubmitToolOutputs
from livecast.services.agents.loop import LoopRequest, RunLoop
from livecast.services.agents.store import new_id
from livecast.services.agents.tools import build_toolset
from livecast.services.agents.tools.file_search import with_resources
from livecast.services.errors import APIError
from livecast.services.llm.protocol import SamplingFields

ACTIVE = ("queued", "in_progress", "requires_action", "cancelling")


class Runs:
    def __init__(self, agents) -> None:
        self.agents, self.store, self.llm = agents, agents.store, agents.llm

    # -- create / resume --------------------------------------------------------------------------
    async def create(self, thread_id: str, body: RunCreate) -> dict | AsyncIterator[Event]:
        store = self.store
        thread = store.threads.require(thread_id, param="thread_id")
        assistant = store.assistants.require(body.assistant_id, param="assistant_id")
        # the run's model, or its assistant's: the base or a LoRA adapter, checked now and again when it runs
        model = self.llm.served_name(self.llm.resolve_model(body.model or assistant.get("model")))
        if any(r["status"] in ACTIVE for r in (self.get(thread_id, r["id"]) for r in self._runs(thread_id))):
            raise APIError(400, f"Thread {thread_id} already has an active run.", param="thread_id")
        tools = body.tools if body.tools is not None else assistant["tools"]
        resolved = with_resources(tools, assistant.get("tool_resources"), thread.get("tool_resources"))
        build_toolset(resolved, self.agents.tools).choice(body.tool_choice)  # 400s now, not a failed run later
        instructions = body.instructions if body.instructions is not None else assistant["instructions"]
        if body.additional_instructions:
            instructions = "\n\n".join(filter(None, [instructions, body.additional_instructions]))
        pick = lambda name: getattr(body, name) if getattr(body, name) is not None else assistant.get(name)  # noqa: E731
        run = {"id": new_id("run"), "object": "thread.run", "created_at": int(time.time()), "thread_id": thread_id,
               "assistant_id": assistant["id"], "status": "queued", "required_action": None, "last_error": None,
               "expires_at": None, "started_at": None, "cancelled_at": None, "failed_at": None, "completed_at": None,
               "incomplete_details": None, "model": model, "instructions": instructions or "",
               "tools": tools, "metadata": body.metadata or {}, "usage": None, "temperature": pick("temperature"),
               "top_p": pick("top_p"), "max_prompt_tokens": body.max_prompt_tokens,
               "max_completion_tokens": body.max_completion_tokens,
               "truncation_strategy": (body.truncation_strategy.model_dump() if body.truncation_strategy
                                       else {"type": "auto", "last_messages": None}),
               "response_format": pick("response_format") or "auto", "tool_choice": body.tool_choice or "auto",
               "parallel_tool_calls": body.parallel_tool_calls}
        extra = [message_object(thread_id, m.role, text_parts(m.content, f"additional_messages[{i}].content"),
                                metadata=m.metadata) for i, m in enumerate(body.additional_messages or [])]
        if not body.stream:
            self.agents.background.check_room()
        with store.db.transaction():
            store.messages.insert_many(extra, thread_id)
            store.runs.insert(run, thread_id)
        return self._start(run, body.stream, [("thread.run.created", copy.deepcopy(run)),
                                              ("thread.run.queued", copy.deepcopy(run))])

    async def submit_tool_outputs(self, thread_id: str, run_id: str, body: SubmitToolOutputs):
        store = self.store
        with store.db.transaction():
            run = self.get(thread_id, run_id)
            if run["status"] != "requires_action":
                raise APIError(400, f"Runs in status {run['status']!r} do not accept tool outputs.", param="run_id")
            wanted = {c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]}
            given = {o.tool_call_id: o.output for o in body.tool_outputs}
            for call_id in given.keys() - wanted:
                raise APIError(400, f"No tool call found with id {call_id!r} in this run's required action.",
                               param="tool_outputs")
            if wanted - given.keys():
                raise APIError(400, f"Tool outputs are missing for {sorted(wanted - given.keys())}.",
                               param="tool_outputs")
            step = next(s for s in reversed(store.steps.children(run_id)) if s["type"] == "tool_calls")
            for call in step["step_details"]["tool_calls"]:
                if call["id"] in given:
                    call["function"]["output"] = given[call["id"]]
            store.steps.update(finish(step, "completed"), run_id)
            run.update(status="queued", required_action=None, expires_at=None)
            store.runs.update(run, thread_id)
        if not body.stream:
            self.agents.background.check_room()
        return self._start(run, body.stream, [("thread.run.step.completed", copy.deepcopy(step)),
                                              ("thread.run.queued", copy.deepcopy(run))])

    def _start(self, run: dict, stream: bool, first: list[Event]):
        events = self._execute(run, first)
        if stream:
            return events
        self.agents.background.start(run["id"], events)
        return run

    async def _execute(self, run: dict, first: list[Event]) -> AsyncIterator[Event]:
        for event in first:
            yield event
        execution = RunExecution(self.store, run, self.agents.config.run_expiry_s)
        loop, status, error = None, "failed", None
        for event in execution.start():
            yield event
        try:
            loop = self._loop(run)
            await loop.open()
            async with aclosing(loop.events()) as loop_events:
                async for ev in loop_events:
                    for event in execution.translate(ev):
                        yield event
            status = {"length": "incomplete", "tool_calls": "requires_action"}.get(loop.finish, "completed")
        except APIError as exc:
            error = {"code": "invalid_prompt" if exc.status == 400 else "server_error", "message": exc.message}
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        except Exception as exc:
            error = {"code": "server_error", "message": f"generation failed: {exc}"}
        finally:
            if loop is not None:
                await loop.close()
            end = execution.end(loop, status, error)
        for event in end:
            yield event

    def _loop(self, run: dict) -> RunLoop:
        thread_id = run["thread_id"]
        items = [message_to_item(m) for m in self.store.messages.children(thread_id) if m["run_id"] != run["id"]]
        strategy = run["truncation_strategy"]
        if strategy["type"] == "last_messages" and strategy["last_messages"]:
            items = items[-strategy["last_messages"]:]
        messages = {m["id"]: m for m in self.store.messages.children(thread_id) if m["run_id"] == run["id"]}
        steps = self.store.steps.children(run["id"])
        tool_choice = run["tool_choice"]
        if steps and tool_choice not in ("none", "auto"):
            tool_choice = "auto"  # the forced call was made (tool outputs came back); now the model may answer
        for step in steps:
            if step["type"] == "message_creation":
                message = messages.get(step["step_details"]["message_creation"]["message_id"])
                items += [message_to_item(message)] if message else []
            else:
                items += step_items(step)
        fmt = run["response_format"]
        text_format = None
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            text_format = (fmt["type"], (fmt.get("json_schema") or {}).get("schema"))
        sampling = SamplingFields(temperature=run["temperature"], top_p=run["top_p"])
        lora = self.llm.resolve_model(run["model"])  # unloaded since the run was created: it fails
        max_tokens = run["max_completion_tokens"]
        if max_tokens is not None and run["usage"]:
            max_tokens = max(1, max_tokens - run["usage"]["completion_tokens"])
        assistant = self.store.assistants.require(run["assistant_id"], param="assistant_id")
        tools = with_resources(run["tools"], assistant.get("tool_resources"),
                               self.store.threads.require(thread_id).get("tool_resources"))
        return RunLoop(self.llm, LoopRequest(
            items=items, toolset=build_toolset(tools, self.agents.tools), tool_choice=tool_choice,
            make_params=functools.partial(sampling.sampling_params, lora=lora), instructions=run["instructions"],
            parallel_tool_calls=run["parallel_tool_calls"], text_format=text_format, max_output_tokens=max_tokens,
            truncation="auto"), run["id"])

    # -- read / cancel / expire -------------------------------------------------------------------
    def _runs(self, thread_id: str) -> list[dict]:
        return self.store.runs.children(thread_id)

    def get(self, thread_id: str, run_id: str) -> dict:
        self.store.threads.require(thread_id, param="thread_id")
        run = self.store.runs.require(run_id, thread_id, param="run_id")
        if run["status"] == "requires_action" and run["expires_at"] and run["expires_at"] < time.time():
            finish(run, "expired", required_action=None)
            self.store.runs.update(run, thread_id)
        return run

    async def cancel(self, thread_id: str, run_id: str) -> dict:
        run = self.get(thread_id, run_id)
        if run["status"] not in ACTIVE:
            raise APIError(400, f"Cannot cancel run with status {run['status']!r}.", param="run_id")
        await self.agents.background.cancel(run_id)
        run = self.get(thread_id, run_id)
        if run["status"] in ACTIVE:  # waiting for tool outputs, or queued and never started
            finish(run, "cancelled", required_action=None)
            self.store.runs.update(run, thread_id)
        return run

    def expire_waiting(self) -> int:
        """Expire runs that waited for tool outputs past `expires_at` (the sweeper calls this)."""
        count = 0
        for row in self.store.db.query("SELECT parent_id, id FROM agent_runs WHERE body LIKE ?",
                                       ('%"status": "requires_action"%',)):
            count += self.get(row["parent_id"], row["id"])["status"] == "expired"
        return count

