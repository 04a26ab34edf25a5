"""One stretch of a run on the shared run loop: loop events become the run's messages, run steps
and `thread.*` stream events, and are written to the store as they happen.

A stretch ends when the model answers (the run completes), calls a client function (the run
requires action; `submit_tool_outputs` starts the next stretch), or fails or is cancelled.
"""
from __future__ import annotations

import copy
import time

from livecast.services.agents.assistants.objects import finish, message_object, step_object, text_annotations, tool_call_entry
from livecast.services.agents.loop import LoopEvent, RunLoop

Event = tuple[str, dict]  # (SSE event name, data)


class RunExecution:
    def __init__(self, store, run: dict, expiry_s: float) -> None:
        self.store, self.run, self.expiry_s = store, run, expiry_s
        self.message = self.message_step = self.tool_step = None

    def _save_run(self) -> None:
        self.store.runs.update(self.run, self.run["thread_id"])

    def _save_step(self, step: dict) -> None:
        self.store.steps.update(step, self.run["id"])

    def start(self) -> list[Event]:
        self.run.update(status="in_progress", started_at=self.run["started_at"] or int(time.time()),
                        required_action=None)
        self._save_run()
        return [("thread.run.in_progress", copy.deepcopy(self.run))]

    def translate(self, ev: LoopEvent) -> list[Event]:
        run, item = self.run, ev.item
        events: list[Event] = []
        if ev.kind == "text.start":
            events += self._close_tool_step()
            self.message = message_object(run["thread_id"], "assistant", [], run_id=run["id"],
                                          assistant_id=run["assistant_id"], status="in_progress")
            self.message_step = step_object(run, "message_creation", {"message_id": self.message["id"]})
            with self.store.db.transaction():
                self.store.steps.insert(self.message_step, run["id"])
                self.store.messages.insert(self.message, run["thread_id"])
            events += [("thread.run.step.created", copy.deepcopy(self.message_step)),
                       ("thread.run.step.in_progress", copy.deepcopy(self.message_step)),
                       ("thread.message.created", copy.deepcopy(self.message)),
                       ("thread.message.in_progress", copy.deepcopy(self.message))]
        elif ev.kind == "text.delta":
            events.append(("thread.message.delta", {"id": self.message["id"], "object": "thread.message.delta", "delta": {
                "content": [{"index": 0, "type": "text", "text": {"value": ev.delta, "annotations": []}}]}}))
        elif ev.kind == "text.done":
            streamed = item["content"][0]["text"]
            text, annotations = text_annotations(streamed, item["content"][0]["annotations"])
            if annotations:  # the markers reach a streaming client too
                events.append(("thread.message.delta", {"id": self.message["id"], "object": "thread.message.delta",
                                                        "delta": {"content": [{"index": 0, "type": "text", "text": {
                                                            "value": text[len(streamed):],
                                                            "annotations": annotations}}]}}))
            self.message["content"] = [{"type": "text", "text": {"value": text, "annotations": annotations}}]
            finish(self.message, "completed" if item["status"] == "completed" else "incomplete")
            if self.message["status"] == "incomplete":
                self.message["incomplete_details"] = {"reason": "max_tokens"}
            finish(self.message_step, "completed")
            with self.store.db.transaction():
                self.store.messages.update(self.message, run["thread_id"])
                self._save_step(self.message_step)
            events += [("thread.message.completed", copy.deepcopy(self.message)),
                       ("thread.run.step.completed", copy.deepcopy(self.message_step))]
        elif ev.kind in ("call.start", "tool.start"):
            if self.tool_step is None:
                self.tool_step = step_object(run, "tool_calls", [])
                self.store.steps.insert(self.tool_step, run["id"])
                events += [("thread.run.step.created", copy.deepcopy(self.tool_step)),
                           ("thread.run.step.in_progress", copy.deepcopy(self.tool_step))]
            self.tool_step["step_details"]["tool_calls"].append(tool_call_entry(item))
        elif ev.kind == "call.delta":
            calls = self.tool_step["step_details"]["tool_calls"]
            index = next(i for i, c in enumerate(calls) if c["id"] == item["call_id"])
            events.append(("thread.run.step.delta", {"id": self.tool_step["id"], "object": "thread.run.step.delta",
                                                     "delta": {"step_details": {"type": "tool_calls", "tool_calls": [
                                                         {"index": index, "id": item["call_id"], "type": "function",
                                                          "function": {"name": item["name"], "arguments": ev.delta,
                                                                       "output": None}}]}}}))
        elif ev.kind in ("call.done", "tool.done"):
            calls = self.tool_step["step_details"]["tool_calls"]
            entry = tool_call_entry(item)
            calls[next(i for i, c in enumerate(calls) if c["id"] == entry["id"])] = entry
            self._save_step(self.tool_step)
        return events

    def _close_tool_step(self) -> list[Event]:
        step, self.tool_step = self.tool_step, None
        if step is None:
            return []
        finish(step, "completed")
        self._save_step(step)
        return [("thread.run.step.completed", copy.deepcopy(step))]

    def end(self, loop: RunLoop | None, status: str, error: dict | None = None) -> list[Event]:
        """Record how this stretch ended; the run's terminal (or requires_action) event."""
        run, events = self.run, []
        if loop is not None:
            usage = run["usage"] or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
            usage["prompt_tokens"] += loop.input_tokens
            usage["completion_tokens"] += loop.output_tokens
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            run["usage"] = usage
        if status == "requires_action":
            calls = [{"id": c["id"], "type": "function", "function": {k: c["function"][k] for k in ("name", "arguments")}}
                     for c in self.tool_step["step_details"]["tool_calls"] if c["type"] == "function"]
            run.update(status="requires_action", expires_at=int(time.time() + self.expiry_s), required_action={
                "type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}})
        else:
            if self.message is not None and self.message["status"] == "in_progress":
                finish(self.message, "incomplete")
                self.store.messages.update(self.message, run["thread_id"])
            step_status = "completed" if status in ("completed", "incomplete") else status
            for step in (self.message_step, self.tool_step):
                if step is not None and step["status"] == "in_progress":
                    finish(step, step_status)
                    self._save_step(step)
                    if step_status == "completed":
                        events.append(("thread.run.step.completed", copy.deepcopy(step)))
            finish(run, status, last_error=error, required_action=None)
            if status == "incomplete":
                run["incomplete_details"] = {"reason": "max_completion_tokens"}
        self._save_run()
        return events + [(f"thread.run.{status}", copy.deepcopy(run))]
