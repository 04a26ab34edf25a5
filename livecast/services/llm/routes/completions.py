"""POST /v1/completions: OpenAI's legacy text completions (string, strings, token ids; echo; logprobs).

Several prompts run as concurrent engine requests; choice `i * n + j` is prompt i's j-th sample.
"""
from __future__ import annotations

import time
import uuid
from contextlib import aclosing
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request

from livecast.engine import CompletionOutput, RequestOutput
from livecast.services.llm.deps import get_llm
from livecast.services.errors import APIError
from livecast.services.llm.cot.route import completion_cot
from livecast.services.llm.service import LLMService
from livecast.services.llm.protocol import CompletionRequest
from livecast.services.llm.streaming import merge, open_all, sse_response, until_disconnected

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(request: Request, body: CompletionRequest, llm: LLMService = Depends(get_llm)):
    lora = llm.resolve_model(body.model)
    if body.cot is not None:
        return await completion_cot(request, body, llm, lora)
    prompts = _prompts(body.prompt)
    if len(prompts) > llm.max_prompts:
        raise APIError(400, f"at most {llm.max_prompts} prompts per request, got {len(prompts)}", param="prompt")
    grammar = None
    if body.response_format is not None:
        spec = body.response_format.json_schema
        grammar = await llm.grammars.response_format(body.response_format.type,
                                                     spec.json_schema if spec is not None else None)
    params = body.sampling_params(
        max_tokens=body.max_tokens, logprobs=body.logprobs, best_of=body.best_of, grammar=grammar,
        prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None, lora=lora)
    completion = _Completion(llm, body, len(prompts), llm.served_name(lora))

    async def respond():
        streams = await open_all([llm.open_stream(p, params, f"{completion.id}-{i}") for i, p in enumerate(prompts)])
        events = completion.chunks(merge(streams))
        if body.stream:
            return sse_response(events)
        return completion.collect([e async for e in events])

    return await until_disconnected(request, respond())


def _prompts(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", param="prompt")
    if isinstance(prompt[0], int):
        return [list(prompt)]
    return list(prompt)


class _Completion:
    def __init__(self, llm: LLMService, body: CompletionRequest, num_prompts: int, model: str) -> None:
        self.llm, self.body, self.model = llm, body, model
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.num_prompt_tokens = [0] * num_prompts
        self.num_tokens: dict[int, int] = {}
        self.text_offset: dict[int, int] = {}  # per choice, for logprobs' text_offset

    def _usage(self) -> dict:
        prompt, completion = sum(self.num_prompt_tokens), sum(self.num_tokens.values())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _chunk(self, choices: list[dict], usage: bool = False) -> dict:
        chunk = {"id": self.id, "object": "text_completion", "created": self.created,
                 "model": self.model, "choices": choices}
        if usage:  # the last chunk only: OpenAI's document gives a completion's usage no null
            chunk["usage"] = self._usage()
        return chunk

    def _echo(self, out: RequestOutput, index: int) -> tuple[str, dict | None]:
        """The prompt's text (and logprobs) that an echoing choice starts with."""
        text = out.prompt if out.prompt is not None else self.llm.decode(out.prompt_token_ids)
        logprobs = None
        if self.body.logprobs is not None:
            entries = out.prompt_logprobs or [None] * len(out.prompt_token_ids)
            logprobs = self.llm.token_texts.completion(out.prompt_token_ids, entries, self.body.logprobs, 0)
        self.text_offset[index] = len(text)
        return text, logprobs

    def _choice(self, index: int, o: CompletionOutput, out: RequestOutput) -> dict:
        text, logprobs = "", None
        if index not in self.num_tokens:
            self.num_tokens[index] = 0
            self.text_offset[index] = 0
            if self.body.echo:
                text, logprobs = self._echo(out, index)
        self.num_tokens[index] += len(o.token_ids)
        if self.body.logprobs is not None:
            generated = self.llm.token_texts.completion(o.token_ids, o.logprobs or [], self.body.logprobs,
                                                        self.text_offset[index])
            self.text_offset[index] += len(o.text)
            logprobs = generated if logprobs is None else {k: logprobs[k] + generated[k] for k in generated}
        return {"index": index, "text": text + o.text, "logprobs": logprobs, "finish_reason": o.finish_reason,
                "stop_reason": o.stop_reason}

    async def chunks(self, outputs: AsyncIterator[tuple[int, RequestOutput]]) -> AsyncIterator[dict]:
        async with aclosing(outputs):
            async for prompt_index, out in outputs:
                self.num_prompt_tokens[prompt_index] = len(out.prompt_token_ids)
                for o in out.outputs:
                    index = prompt_index * self.body.n + o.index
                    if o.text or o.token_ids or o.finish_reason or index not in self.num_tokens:
                        yield self._chunk([self._choice(index, o, out)])
        if self.body.stream_options and self.body.stream_options.include_usage and self.body.stream:
            yield self._chunk([], usage=True)

    def collect(self, chunks: list[dict]) -> dict:
        choices: dict[int, dict] = {}
        for chunk in chunks:
            for c in chunk["choices"]:
                merged = choices.get(c["index"])
                if merged is None:
                    choices[c["index"]] = dict(c)
                    continue
                merged["text"] += c["text"]
                merged["finish_reason"], merged["stop_reason"] = c["finish_reason"], c["stop_reason"]
                if c["logprobs"] is not None:
                    merged["logprobs"] = {k: merged["logprobs"][k] + c["logprobs"][k] for k in c["logprobs"]}
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [choices[i] for i in sorted(choices)], "usage": self._usage()}
