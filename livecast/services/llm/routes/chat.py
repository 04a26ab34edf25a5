"""POST /v1/chat/completions: OpenAI chat, streamed or not, with tools and structured output.

Streamed and non-streamed responses come from the same per-choice steps (`_Choice.step`),
so a non-streamed message is exactly the sum of the deltas a stream would have sent.
"""
from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request

from livecast.engine import CompletionOutput, RequestOutput
from livecast.services.llm.deps import get_llm
from livecast.services.errors import APIError
from livecast.services.projects import current_project
from livecast.services.llm.cot.route import chat_cot
from livecast.services.llm.service import LLMService
from livecast.services.llm.protocol import ChatCompletionRequest
from livecast.services.llm.streaming import sse_response, until_disconnected
from livecast.services.llm.function_calls import ToolCallParser, ToolChoice, resolve_tool_choice

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request, body: ChatCompletionRequest, llm: LLMService = Depends(get_llm)):
    lora = llm.resolve_model(body.model)
    if body.cot is not None:
        if body.store:
            raise APIError(400, "store: chat completions with the cot extension are not stored", param="store")
        return await chat_cot(request, body, llm, lora)
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []]
    tool_choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    choice = resolve_tool_choice(tools, tool_choice)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    offered = [{"type": "function", "function": f} for f in choice.functions] if choice.mode != "none" else None
    prompt_ids = await llm.encode_chat(messages, offered)

    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
    if body.top_logprobs is not None and not 0 <= body.top_logprobs <= 20:
        raise APIError(400, f"top_logprobs must be in [0, 20], got {body.top_logprobs}", param="top_logprobs")
    if choice.constrained:
        grammar = await llm.grammars.tool_calls(choice.functions, choice.name, body.parallel_tool_calls)
    elif body.response_format is not None:
        spec = body.response_format.json_schema
        grammar = await llm.grammars.response_format(body.response_format.type,
                                                     spec.json_schema if spec is not None else None)
    else:
        grammar = None
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    params = body.sampling_params(max_tokens=max_tokens,
                                  logprobs=(body.top_logprobs or 0) if body.logprobs else None, grammar=grammar,
                                  lora=lora)

    completion = _ChatCompletion(llm, body, choice, llm.served_name(lora))
    if body.store:  # kept in the agents room's store, in the request's project
        if llm.completion_store is None:
            raise APIError(400, "store: this server keeps no chat completions (the agents room is off)",
                           param="store")
        project, store = current_project(request), llm.completion_store
        completion.on_done = lambda done: store.save(project, done, messages, body.metadata)

    async def respond():
        stream = await llm.open_stream(prompt_ids, params, completion.id)
        if body.stream:
            return sse_response(completion.chunks(stream))
        return await completion.response(stream)

    return await until_disconnected(request, respond())


class _Choice:
    def __init__(self, index: int, choice: ToolChoice) -> None:
        self.index = index
        self.parser = None if choice.mode == "none" else ToolCallParser(
            [f["name"] for f in choice.functions], stream_arguments=choice.constrained,
            keep_content=not choice.constrained)
        self.num_tokens = 0
        self.has_tool_calls = False

    def step(self, o: CompletionOutput) -> tuple[dict, str | None]:
        """The OpenAI delta for this engine delta, and the finish reason once finished."""
        self.num_tokens += len(o.token_ids)
        finished = o.finish_reason is not None
        content, calls = (o.text, []) if self.parser is None else self.parser.feed(o.text, final=finished)
        delta: dict = {}
        if content:
            delta["content"] = content
        if calls:
            delta["tool_calls"] = [c.to_openai() for c in calls]
            self.has_tool_calls = True
        reason = o.finish_reason
        if reason == "stop" and self.has_tool_calls:
            reason = "tool_calls"
        return delta, reason


class _ChatCompletion:
    def __init__(self, llm: LLMService, body: ChatCompletionRequest, choice: ToolChoice, model: str) -> None:
        self.llm, self.body, self.model = llm, body, model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.choices = [_Choice(i, choice) for i in range(body.n)]
        self.top_logprobs = body.top_logprobs or 0
        self.num_prompt_tokens = 0
        # each choice's message as it grows: the non-streamed answer, and what `store: true` keeps of a stream
        self.messages = [{"content": "", "tool_calls": [], "logprobs": [], "finish_reason": None} for _ in self.choices]
        self.on_done = None  # called with the finished completion (storing it)

    def _logprobs(self, o: CompletionOutput) -> dict | None:
        if not self.body.logprobs:
            return None
        return {"content": self.llm.token_texts.chat(o.logprobs or [], self.top_logprobs), "refusal": None}

    def _usage(self) -> dict:
        completion = sum(c.num_tokens for c in self.choices)
        return {"prompt_tokens": self.num_prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.num_prompt_tokens + completion}

    def _chunk(self, choices: list[dict], usage: bool = False) -> dict:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.model, "choices": choices}
        if self.body.stream_options and self.body.stream_options.include_usage:
            chunk["usage"] = self._usage() if usage else None
        return chunk

    async def chunks(self, stream: AsyncIterator[RequestOutput]) -> AsyncIterator[dict]:
        for c in self.choices:
            yield self._chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}])
        async for out in stream:
            self.num_prompt_tokens = len(out.prompt_token_ids)
            for o in out.outputs:
                delta, reason = self._step(o)
                if delta or reason or o.token_ids:
                    yield self._chunk([{"index": o.index, "delta": delta, "logprobs": self._logprobs(o),
                                        "finish_reason": reason}])
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield self._chunk([], usage=True)
        if self.on_done is not None:
            self.on_done(self._completion())

    async def response(self, stream: AsyncIterator[RequestOutput]) -> dict:
        async for out in stream:
            self.num_prompt_tokens = len(out.prompt_token_ids)
            for o in out.outputs:
                self._step(o)
        completion = self._completion()
        if self.on_done is not None:
            self.on_done(completion)
        return completion

    def _step(self, o: CompletionOutput) -> tuple[dict, str | None]:
        """One choice's delta, added to its message."""
        delta, reason = self.choices[o.index].step(o)
        m = self.messages[o.index]
        m["content"] += delta.get("content", "")
        for call in delta.get("tool_calls", []):
            if "id" in call:
                m["tool_calls"].append({"id": call["id"], "type": "function", "function": dict(call["function"])})
            else:
                m["tool_calls"][call["index"]]["function"]["arguments"] += call["function"]["arguments"]
        if self.body.logprobs:
            m["logprobs"].extend(self._logprobs(o)["content"])
        m["finish_reason"] = reason or m["finish_reason"]
        return delta, reason

    def _completion(self) -> dict:
        choices = []
        for i, m in enumerate(self.messages):
            message = {"role": "assistant", "content": m["content"], "refusal": None}
            if m["tool_calls"]:
                message["tool_calls"] = m["tool_calls"]
                message["content"] = m["content"] if m["content"].strip() else None
            choices.append({"index": i, "message": message, "finish_reason": m["finish_reason"],
                            "logprobs": {"content": m["logprobs"], "refusal": None} if self.body.logprobs else None})
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": choices, "usage": self._usage()}
