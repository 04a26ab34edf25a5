"""The response lifecycle: check the request, gather its context (a `previous_response_id` chain
or a conversation), run the loop, and record the result — streamed, awaited or in the background.

Store writes are two short transactions: the response (in progress) with its input items once
generation has started, and the finished response (plus, for a conversation, its new items) at the
end. A client that disconnects, or a cancel, still records the response as cancelled; `store:
false` writes nothing at all.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import AsyncIterator

from livecast.services.agents.background import drain
from livecast.services.agents.loop import LoopRequest, RunLoop
from livecast.services.agents.responses.cot import CotLoop
from livecast.services.agents.responses.events import ResponseEvents
from livecast.services.agents.responses.items import check_call_outputs, normalize_input
from livecast.services.agents.responses.protocol import ResponseCreate
from livecast.services.agents.store import new_id
from livecast.services.agents.tools import build_toolset, mcp
from livecast.services.errors import APIError

TERMINAL = ("completed", "incomplete", "failed", "cancelled")


class Responses:
    def __init__(self, agents) -> None:
        self.agents, self.store, self.llm = agents, agents.store, agents.llm

    # -- create -----------------------------------------------------------------------------------
    async def create(self, body: ResponseCreate) -> dict | AsyncIterator[dict]:
        """The finished response, its event stream (`stream`), or the queued response (`background`)."""
        lora = self.llm.resolve_model(body.model)
        if body.top_logprobs:
            raise APIError(400, "top_logprobs: responses on this server carry no logprobs (output_text.logprobs is "
                                "always []); chat completions return them", param="top_logprobs")
        if body.previous_response_id and body.conversation_id:
            raise APIError(400, "previous_response_id and conversation cannot be used together",
                           param="previous_response_id")
        if body.background and not body.store:
            raise APIError(400, "background responses must be stored (store: true)", param="background")
        if body.background and body.stream:
            raise APIError(400, "stream is not supported with background on this server; poll "
                                "GET /v1/responses/{id} instead", param="stream")
        new_items = normalize_input(body.input)
        context = self.context(body)
        check_call_outputs(context, new_items)
        toolset = build_toolset(body.tools, self.agents.tools, mcp=True)
        if toolset.mcp:  # list the remote MCP servers' tools and run the approved calls, before the first turn
            await mcp.prepare(toolset, context + new_items, mcp.listed_in_chain(self.store.responses,
                                                                                body.previous_response_id))
        response_id = new_id("resp")
        loop = self._loop(body, context + new_items, toolset, response_id, lora)
        response = self._object(response_id, body, toolset, lora)
        if body.background:
            self.agents.background.check_room()
        await loop.open()  # bad input and a full queue fail here, before anything is stored
        if body.store:
            with self.store.db.transaction():
                self.store.responses.insert(response)
                self.store.items.insert_many(new_items, response_id)
        events = ResponseEvents(response, body.include)
        run = self._run(loop, events, body, new_items)
        if body.background:
            self.agents.background.start(response_id, run, loop.close)
            return {**response, "status": "queued"}
        if body.stream:
            return run
        await drain(run, loop.close)
        return events.response

    def _loop(self, body: ResponseCreate, items: list[dict], toolset, response_id: str,
              lora: str | None) -> RunLoop | CotLoop:
        if body.cot is not None:  # the Chain-of-Thought extension: a reasoning item, then the answer
            return CotLoop(self.llm, body, items, lora)
        fmt = body.text.format if body.text else None
        return RunLoop(self.llm, LoopRequest(
            items=items, toolset=toolset, tool_choice=body.tool_choice,
            make_params=lambda **kw: body.sampling_params(lora=lora, **kw), instructions=body.instructions,
            parallel_tool_calls=body.parallel_tool_calls,
            text_format=(fmt.type, fmt.json_schema) if fmt and fmt.type != "text" else None,
            max_output_tokens=body.max_output_tokens, max_tool_calls=body.max_tool_calls,
            truncation=body.truncation), response_id)

    def context(self, body: ResponseCreate) -> list[dict]:
        """The items before this response's input: its chain of previous responses, or its conversation."""
        if body.conversation_id:
            self.store.conversations.require(body.conversation_id, param="conversation")
            return self.store.items.children(body.conversation_id)
        chain = []
        response_id = body.previous_response_id
        while response_id:
            previous = self.store.responses.require(response_id, param="previous_response_id")
            chain.append(previous)
            response_id = previous.get("previous_response_id")
        items = []
        for previous in reversed(chain):
            items += self.store.items.children(previous["id"]) + previous["output"]
        return items

    def _object(self, response_id: str, body: ResponseCreate, toolset, lora: str | None) -> dict:
        tool_choice = body.tool_choice if body.tool_choice is not None else ("auto" if toolset.functions else "none")
        fmt = body.text.format.to_openai() if body.text else {"type": "text"}
        return {"id": response_id, "object": "response", "created_at": int(time.time()), "status": "in_progress",
                "background": body.background, "error": None, "incomplete_details": None,
                "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "max_tool_calls": body.max_tool_calls, "model": self.llm.served_name(lora), "output": [],
                "parallel_tool_calls": body.parallel_tool_calls, "previous_response_id": body.previous_response_id,
                "conversation": {"id": body.conversation_id} if body.conversation_id else None,
                "reasoning": None, "store": body.store, "temperature": body.temperature, "top_p": body.top_p,
                "text": {"format": fmt}, "tool_choice": tool_choice, "tools": [_echoed(t) for t in body.tools or []],
                "truncation": body.truncation, "metadata": body.metadata or {},
                # optional but not nullable in OpenAI's document: absent until known
                **({"user": body.user} if body.user is not None else {})}

    # -- run --------------------------------------------------------------------------------------
    async def _run(self, loop: RunLoop, events: ResponseEvents, body: ResponseCreate,
                   new_items: list[dict]) -> AsyncIterator[dict]:
        response = events.response
        yield events.lifecycle("response.created")
        yield events.lifecycle("response.in_progress")
        try:
            async with aclosing(loop.events()) as loop_events:
                async for ev in loop_events:
                    for event in events.translate(ev):
                        yield event
            if loop.finish == "length":
                response.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
            else:
                response["status"] = "completed"
        except APIError as exc:
            response.update(status="failed", error={"code": exc.code or "server_error", "message": exc.message})
        except (asyncio.CancelledError, GeneratorExit):
            response["status"] = "cancelled"
            raise
        except Exception as exc:
            response.update(status="failed", error={"code": "server_error", "message": f"generation failed: {exc}"})
        finally:
            response["usage"] = _usage(loop)
            if getattr(loop, "extension", None) is not None:
                response["cot"] = loop.extension
            if body.store:
                self._record(response, new_items)
        yield events.lifecycle({"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            response["status"], "response.failed"))

    def _record(self, response: dict, new_items: list[dict]) -> None:
        with self.store.db.transaction():
            self.store.responses.update(response)
            conversation = response["conversation"]
            if conversation and response["status"] in ("completed", "incomplete"):
                self.store.items.insert_many(new_items + response["output"], conversation["id"])

    # -- the other routes -------------------------------------------------------------------------
    def get(self, response_id: str) -> dict:
        return self.store.responses.require(response_id)

    async def cancel(self, response_id: str) -> dict:
        response = self.get(response_id)
        if not response.get("background"):
            raise APIError(400, "Only background responses can be cancelled.", param="response_id")
        await self.agents.background.cancel(response_id)
        response = self.get(response_id)
        if response["status"] not in TERMINAL:  # cancelled before its task ever ran
            response["status"] = "cancelled"
            self.store.responses.update(response)
        return response

    async def delete(self, response_id: str) -> dict:
        self.get(response_id)
        await self.agents.background.cancel(response_id)
        self.store.delete_response(response_id)
        return {"id": response_id, "object": "response", "deleted": True}


def _echoed(tool: dict) -> dict:
    """A tool as the response shows it: a function's `strict` and `parameters` are always there (null
    when not sent), as OpenAI's document requires."""
    if tool.get("type") == "function":
        return {"strict": None, "parameters": None, **tool}
    if tool.get("type") == "mcp":  # its headers reach the MCP server only, never the store
        return mcp.redacted(tool)
    return tool


def _usage(loop: RunLoop) -> dict:
    return {"input_tokens": loop.input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": loop.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": loop.input_tokens + loop.output_tokens}

