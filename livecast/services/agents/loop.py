"""The run loop both APIs share: generate, run built-in tools, generate again, until the model
answers, calls a client function, or runs out of tokens.

`RunLoop.open()` fits the first prompt and starts generating, so bad input (a context that does
not fit, a full queue, a bad grammar) raises APIError before anything is sent or stored. `events()`
then yields `LoopEvent`s — a message's text as it grows, function calls as their arguments grow,
built-in tool calls and their results — which the Responses layer turns into `response.*` events
and the Assistants layer into run steps and `thread.*` events. Closing `events()` early aborts the
engine request and frees its KV blocks. Nothing here touches the store.
"""
from __future__ import annotations

import bisect
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from livecast.engine import SamplingParams
from livecast.services.agents.responses.items import to_messages
from livecast.services.agents.store import new_id
from livecast.services.agents.tools import ToolSet
from livecast.services.errors import APIError
from livecast.services.llm.service import LLMService
from livecast.services.llm.function_calls import ToolCallParser, ToolChoice


@dataclass(slots=True)
class LoopRequest:
    items: list[dict]  # the context, oldest first, ending with the new input
    toolset: ToolSet
    tool_choice: Any  # as the client sent it (None: auto when there are tools)
    make_params: Callable[..., SamplingParams]  # (max_tokens=, grammar=) -> SamplingParams
    instructions: str | None = None
    parallel_tool_calls: bool = True
    text_format: tuple[str, Any] | None = None  # ("json_schema", schema) | ("json_object", None)
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    truncation: str = "disabled"  # "auto": drop the oldest items until the prompt fits


@dataclass(slots=True)
class LoopEvent:
    kind: str  # text.start|text.delta|text.done|call.start|call.delta|call.done|tool.start|tool.done|approval
    item: dict
    delta: str = ""
    progress: list[tuple[str, dict]] = field(default_factory=list)  # tool.start: the built-in's own events


class RunLoop:
    def __init__(self, llm: LLMService, request: LoopRequest, request_id: str) -> None:
        self.llm, self.req, self.request_id = llm, request, request_id
        self.choice = request.toolset.choice(request.tool_choice)
        # built-in work done before the first turn (tools.mcp.prepare: tool lists, approved calls) is output too
        self.context = list(request.items) + [done for *_, done in request.toolset.prelude]
        self.output: list[dict] = []  # every output item, in order
        self.input_tokens = self.output_tokens = 0
        self.num_dropped = 0  # context items truncation dropped
        self.finish = None  # "stop" | "length" | "tool_calls" once events() ends
        self._turn = 0
        self._stream = None

    async def open(self) -> None:
        self._stream = await self._start_turn()

    async def close(self) -> None:
        """Abort the first turn if `events()` never took it over."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()

    async def events(self) -> AsyncIterator[LoopEvent]:
        stream, tool_calls_made = self._stream, 0
        self._stream = None
        for start, progress, done in self.req.toolset.prelude:
            yield LoopEvent("tool.start", start, progress=progress)
            self.output.append(done)
            yield LoopEvent("tool.done", done)
        while True:
            calls: list[dict] = []
            async with aclosing(self._turn_events(stream, calls)) as turn:
                async for event in turn:
                    yield event
            if self.finish == "length" or not calls:
                return
            if any(c["name"] not in self.req.toolset.builtins for c in calls):
                self.finish = "tool_calls"  # the client answers; built-ins in the same turn run first
            for call in calls:
                builtin = self.req.toolset.builtins.get(call["name"])
                if builtin is None:
                    continue
                item = await builtin.start_item(new_id(builtin.id_prefix), call["arguments"])
                if item["type"] == "mcp_approval_request":  # the client answers it in a next response
                    self.finish = "tool_calls"
                    self._emit(item)
                    yield LoopEvent("approval", item)
                    continue
                yield LoopEvent("tool.start", item, progress=builtin.progress(item))
                item = await builtin.call(item)
                tool_calls_made += 1
                self._emit(item)
                yield LoopEvent("tool.done", item)
            if self.finish == "tool_calls":
                return
            if self.req.max_tool_calls is not None and tool_calls_made >= self.req.max_tool_calls:
                self.choice = ToolChoice("none", self.choice.functions)
            elif self.choice.constrained:  # a forced call was made; now the model may answer
                self.choice = ToolChoice("auto", self.choice.functions)
            stream = await self._start_turn()

    # -- one turn ---------------------------------------------------------------------------------
    async def _start_turn(self):
        prompt_ids = self._fit()
        budget = None
        if self.req.max_output_tokens is not None:
            budget = self.req.max_output_tokens - self.output_tokens
        if self.choice.constrained:
            grammar = await self.llm.grammars.tool_calls(self.choice.functions, self.choice.name,
                                                         self.req.parallel_tool_calls)
        elif self.req.text_format is not None:
            grammar = await self.llm.grammars.response_format(*self.req.text_format)
        else:
            grammar = None
        params = self.req.make_params(max_tokens=budget, grammar=grammar)
        self.input_tokens += len(prompt_ids)
        self._turn += 1
        return await self.llm.open_stream(prompt_ids, params, f"{self.request_id}-{self._turn}")

    def _fit(self) -> list[int]:
        """The prompt for the context; `truncation: auto` drops the oldest items until it fits."""
        reserve = 1 if self.req.max_output_tokens is None else self.req.max_output_tokens - self.output_tokens
        limit = self.llm.max_model_len - max(reserve, 1)
        ids = self._prompt(self.context)
        if len(ids) <= limit:
            return ids
        if self.req.truncation != "auto":
            raise APIError(400, f"the input is {len(ids)} tokens, and with max_output_tokens "
                                f"{self.req.max_output_tokens or 1} that exceeds the model's context of "
                                f"{self.llm.max_model_len} tokens; shorten it or set truncation to 'auto'",
                           param="input", code="context_length_exceeded")
        # the prompt shrinks as the start moves on: find the first start that fits
        starts = range(1, len(self.context))
        fits = bisect.bisect_left(starts, True, key=lambda s: len(self._prompt(self.context[s:])) <= limit)
        if fits == len(starts):
            raise APIError(400, f"even the last input item alone exceeds the model's context of "
                                f"{self.llm.max_model_len} tokens", param="input", code="context_length_exceeded")
        self.num_dropped += starts[fits]
        self.context = self.context[starts[fits]:]
        return self._prompt(self.context)

    def num_prompt_tokens(self) -> int:
        """The first turn's prompt length, as `open()` would build it (truncation included)."""
        return len(self._fit()) if self.req.truncation == "auto" else self.prompt_tokens(self.context)

    def prompt_tokens(self, items: list[dict]) -> int:
        return len(self._prompt(items))

    def _prompt(self, items: list[dict]) -> list[int]:
        system = [{"role": "system", "content": self.req.instructions}] if self.req.instructions else []
        offered = None
        if self.choice.mode != "none":
            offered = [{"type": "function", "function": f} for f in self.choice.functions]
        return self.llm.chat_prompt_ids(system + to_messages(items), offered)

    async def _turn_events(self, stream, calls: list[dict]) -> AsyncIterator[LoopEvent]:
        choice, builtins = self.choice, self.req.toolset.builtins
        parser = None if choice.mode == "none" else ToolCallParser(
            [f["name"] for f in choice.functions], stream_arguments=choice.constrained,
            keep_content=not choice.constrained)
        message = None
        opened: list[dict] = []  # items of this turn, in the order they started (= output order)
        by_index: dict[int, dict] = {}
        async with aclosing(stream):
            async for out in stream:
                o = out.outputs[0]
                self.output_tokens += len(o.token_ids)
                finished = o.finish_reason is not None
                content, deltas = (o.text, []) if parser is None else parser.feed(o.text, final=finished)
                if content:
                    if message is None:
                        message = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress",
                                   "content": [{"type": "output_text", "text": "", "annotations": [],
                                                                 "logprobs": []}]}
                        opened.append(message)
                        yield LoopEvent("text.start", message)
                    message["content"][0]["text"] += content
                    yield LoopEvent("text.delta", message, content)
                for d in deltas:
                    if d.id is not None:
                        call = {"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                                "call_id": d.id, "name": d.name, "arguments": ""}
                        by_index[d.index] = call
                        calls.append(call)
                        if call["name"] not in builtins:
                            message = None  # text after a call starts a new message
                            opened.append(call)
                            yield LoopEvent("call.start", call)
                    call = by_index[d.index]
                    call["arguments"] += d.arguments
                    if d.arguments and call["name"] not in builtins:
                        yield LoopEvent("call.delta", call, d.arguments)
                if finished:
                    self.finish = "length" if o.finish_reason == "length" else "stop"
        for item in opened:
            if item["type"] == "message":  # e.g. file_search's citations of the files it put in the context
                part = item["content"][0]
                part["annotations"] = [a for b in builtins.values() for a in b.annotations(part["text"])]
            yield self._close(item, "text.done" if item["type"] == "message" else "call.done")

    def _close(self, item: dict, kind: str) -> LoopEvent:
        item["status"] = "incomplete" if self.finish == "length" else "completed"
        self._emit(item)
        return LoopEvent(kind, item)

    def _emit(self, item: dict) -> None:
        self.output.append(item)
        self.context.append(item)
