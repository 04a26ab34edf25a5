"""The `cot` extension field of POST /v1/chat/completions and /v1/completions, streamed or not.

    {"cot": {"mode": "zero_shot" | "few_shot" | "auto" | "self_consistency",
             "demos": NAME | [{question, rationale, answer}, ...], "n": N, "answer_format": ...}}

The question is the last user message (chat) or the one text prompt (completions). The reply
keeps rationale and answer apart, as reasoning models do on vLLM/SGLang: chat puts the answer in
`message.content` (the text itself when no answer could be extracted) and the rationale in
`message.reasoning_content`; streaming sends `delta.reasoning_content` while the rationale is
generated, then the answer as `delta.content`. Completions put the answer in `text` and the same
`reasoning_content` on the choice. Chat adds `cot: {mode, answer, votes}` to the response (the
last chunk when streaming), completions to the choice. Self-consistency's chains are one engine
request with n samples; its rationale (the chosen chain's) is only known, and sent, at the end.
Usage counts every prompt and generated token of every stage.
"""
from __future__ import annotations

from contextlib import aclosing
from typing import AsyncIterator

from fastapi import Request

from livecast.engine import SamplingParams
from livecast.services.errors import APIError
from livecast.services.llm.cot import CotError, CotResult, CotSpec
from livecast.services.llm.cot.runner import RATIONALE_MAX_TOKENS, SELF_CONSISTENCY_TEMPERATURE
from livecast.services.llm.cot.serving import CotCall, invalid_cot
from livecast.services.llm.protocol import ChatCompletionRequest, CompletionRequest
from livecast.services.llm.service import LLMService
from livecast.services.llm.streaming import sse_response, until_disconnected


def parse_cot(body: ChatCompletionRequest | CompletionRequest, unsupported: dict[str, object]) -> CotSpec:
    """The request's CotSpec; `unsupported`: fields (with their neutral value) CoT cannot honour."""
    try:
        spec = CotSpec.from_request(body.cot)
    except CotError as exc:
        raise invalid_cot(exc) from None
    if body.n != 1:
        raise APIError(400, f"n must be 1 with cot (got {body.n}); self-consistency samples cot.n chains",
                       param="n", code="invalid_cot")
    for name, neutral in unsupported.items():
        if getattr(body, name) not in (None, neutral):
            raise APIError(400, f"{name} cannot be combined with cot", param=name, code="invalid_cot")
    return spec


def cot_params(body: ChatCompletionRequest | CompletionRequest, spec: CotSpec, max_tokens: int | None,
               lora: str | None = None) -> SamplingParams:
    """The request's sampling controls; unset ones take run_cot's defaults (greedy, or T=0.7 for
    self-consistency; a rationale-sized token budget). `lora`: the adapter every stage runs on."""
    extra = {} if body.temperature is not None else {
        "temperature": SELF_CONSISTENCY_TEMPERATURE if spec.mode == "self_consistency" else 0.0}
    return body.sampling_params(max_tokens=RATIONALE_MAX_TOKENS if max_tokens is None else max_tokens, lora=lora,
                                **extra)


def cot_extension(result: CotResult) -> dict:
    return {"mode": result.mode, "answer": result.answer, "votes": result.votes}


def answer_text(result: CotResult) -> str:
    return result.answer if result.answer is not None else result.rationale


async def respond(request: Request, call: CotCall, stream: bool, render) -> object:
    """Run `call` and answer with `render` (a _ChatShape or _CompletionShape), streamed or not."""
    async def work():
        if not stream:
            return render.response(call, await call.run())
        await call.start()
        return sse_response(render.chunks(call))

    return await until_disconnected(request, work())


# -- chat ------------------------------------------------------------------------------------------
def _text(content) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content if part.type == "text")


async def chat_cot(request: Request, body: ChatCompletionRequest, llm: LLMService, lora: str | None = None):
    spec = parse_cot(body, {"tools": None, "response_format": None, "logprobs": False, "top_logprobs": None})
    users = [m for m in body.messages if m.role == "user"]
    question = _text(users[-1].content) if users else ""
    if not question.strip():
        raise APIError(400, "cot needs a question: the last user message must hold text", param="messages",
                       code="invalid_cot")
    system = [m.model_dump(exclude_none=True) for m in body.messages if m.role in ("system", "developer")]
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    call = CotCall(llm, spec, question, cot_params(body, spec, max_tokens, lora), True, system)
    return await respond(request, call, body.stream, _ChatShape(body))


class _ChatShape:
    def __init__(self, body: ChatCompletionRequest) -> None:
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def _chunk(self, call: CotCall, choices: list[dict], **extra) -> dict:
        chunk = {"id": f"chatcmpl-{call.id}", "object": "chat.completion.chunk", "created": call.created,
                 "model": call.model, "choices": choices, **extra}
        if self.include_usage:
            chunk.setdefault("usage", None)
        return chunk

    def _delta(self, call: CotCall, delta: dict, finish_reason: str | None = None, **extra) -> dict:
        return self._chunk(call, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                           **extra)

    async def chunks(self, call: CotCall) -> AsyncIterator[dict]:
        yield self._delta(call, {"role": "assistant", "content": ""})
        async with aclosing(call.events()) as events:  # closing it on a disconnect aborts the run
            async for reasoning, result in events:
                if reasoning:
                    yield self._delta(call, {"reasoning_content": reasoning})
                if result is not None:
                    yield self._delta(call, {"content": answer_text(result)}, call.generate.finish_reason(result),
                                      cot=cot_extension(result))
        if self.include_usage:
            yield self._chunk(call, [], usage=call.usage())

    def response(self, call: CotCall, result: CotResult) -> dict:
        message = {"role": "assistant", "content": answer_text(result), "reasoning_content": result.rationale,
                   "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": call.generate.finish_reason(result),
                  "logprobs": None}
        return {"id": f"chatcmpl-{call.id}", "object": "chat.completion", "created": call.created,
                "model": call.model, "choices": [choice],
                "usage": call.usage(), "cot": cot_extension(result)}


# -- completions -----------------------------------------------------------------------------------
async def completion_cot(request: Request, body: CompletionRequest, llm: LLMService, lora: str | None = None):
    spec = parse_cot(body, {"echo": False, "logprobs": None, "best_of": 1, "response_format": None})
    if not isinstance(body.prompt, str):
        if not (isinstance(body.prompt, list) and len(body.prompt) == 1 and isinstance(body.prompt[0], str)):
            raise APIError(400, "cot takes one text prompt (the question)", param="prompt", code="invalid_cot")
    question = body.prompt if isinstance(body.prompt, str) else body.prompt[0]
    max_tokens = body.max_tokens if "max_tokens" in body.model_fields_set else None  # 16 is too short here
    call = CotCall(llm, spec, question, cot_params(body, spec, max_tokens, lora), False)
    return await respond(request, call, body.stream, _CompletionShape(body))


class _CompletionShape:
    def __init__(self, body: CompletionRequest) -> None:
        self.include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)

    def _chunk(self, call: CotCall, choices: list[dict], **extra) -> dict:
        chunk = {"id": f"cmpl-{call.id}", "object": "text_completion", "created": call.created,
                 "model": call.model, "choices": choices, **extra}
        if self.include_usage:
            chunk.setdefault("usage", None)
        return chunk

    @staticmethod
    def _choice(text: str, reasoning: str, finish_reason: str | None = None, **extra) -> dict:
        return {"index": 0, "text": text, "reasoning_content": reasoning, "logprobs": None,
                "finish_reason": finish_reason, "stop_reason": None, **extra}

    async def chunks(self, call: CotCall) -> AsyncIterator[dict]:
        async with aclosing(call.events()) as events:  # closing it on a disconnect aborts the run
            async for reasoning, result in events:
                if result is None:
                    yield self._chunk(call, [self._choice("", reasoning)])
                else:
                    yield self._chunk(call, [self._choice(answer_text(result), reasoning,
                                                          call.generate.finish_reason(result),
                                                          cot=cot_extension(result))])
        if self.include_usage:
            yield self._chunk(call, [], usage=call.usage())

    def response(self, call: CotCall, result: CotResult) -> dict:
        choice = self._choice(answer_text(result), result.rationale, call.generate.finish_reason(result),
                              cot=cot_extension(result))
        return {**self._chunk(call, [choice]), "usage": call.usage()}
