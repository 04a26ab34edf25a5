"""Hugging Face TGI's POST /generate and /generate_stream."""
from __future__ import annotations

import uuid
from typing import AsyncIterator

from fastapi import APIRouter, Depends, Request

from livecast.engine import CompletionOutput, RequestOutput
from livecast.services.llm.deps import get_llm
from livecast.services.errors import APIError
from livecast.services.llm.service import LLMService
from livecast.services.llm.protocol import SamplingFields, TGIRequest
from livecast.services.llm.streaming import sse_response, until_disconnected

router = APIRouter()


@router.post("/generate")
async def generate(request: Request, body: TGIRequest, llm: LLMService = Depends(get_llm)):
    async def respond():
        stream = await _open(body, llm)
        text, tokens, last = "", [], None
        async for out in stream:
            o = last = out.outputs[0]
            text += o.text
            tokens.extend(_tokens(llm, o))
        result = {"generated_text": (body.inputs if body.parameters.return_full_text else "") + text}
        if body.parameters.details:
            result["details"] = {"finish_reason": _finish_reason(last), "generated_tokens": len(tokens),
                                 "seed": body.parameters.seed, "prefill": [], "tokens": tokens}
        return result

    return await until_disconnected(request, respond())


@router.post("/generate_stream")
async def generate_stream(request: Request, body: TGIRequest, llm: LLMService = Depends(get_llm)):
    async def events(stream: AsyncIterator[RequestOutput]) -> AsyncIterator[dict]:
        text, count = "", 0
        async for out in stream:
            o = out.outputs[0]
            text += o.text
            tokens = _tokens(llm, o)
            for k, token in enumerate(tokens):
                count += 1
                last = o.finish_reason is not None and k == len(tokens) - 1
                yield {"index": count, "token": token, "top_tokens": None,
                       "generated_text": ((body.inputs if body.parameters.return_full_text else "") + text)
                       if last else None,
                       "details": {"finish_reason": _finish_reason(o), "generated_tokens": count,
                                   "seed": body.parameters.seed} if last else None}

    async def respond():
        return sse_response(events(await _open(body, llm)), done=False)

    return await until_disconnected(request, respond())


async def _open(body: TGIRequest, llm: LLMService) -> AsyncIterator[RequestOutput]:
    p = body.parameters
    lora = llm.resolve_model(p.adapter_id)
    sampling = p.do_sample or (p.temperature is not None and p.temperature > 0)
    fields = SamplingFields(temperature=(p.temperature or 1.0) if sampling else 0.0, top_p=p.top_p, top_k=p.top_k,
                            repetition_penalty=p.repetition_penalty, frequency_penalty=p.frequency_penalty,
                            seed=p.seed, stop=p.stop or None)
    grammar = None
    if p.grammar is not None:
        if p.grammar.type == "regex":
            if not isinstance(p.grammar.value, str):
                raise APIError(400, "a regex grammar's value must be a string", param="parameters.grammar")
            grammar = await llm.grammars.regex(p.grammar.value, "parameters.grammar")
        elif p.grammar.value is None:
            grammar = await llm.grammars.json_object()
        else:
            grammar = await llm.grammars.json_schema(p.grammar.value, "parameters.grammar")
    params = fields.sampling_params(max_tokens=p.max_new_tokens, logprobs=0, grammar=grammar, lora=lora)
    return await llm.open_stream(body.inputs, params, f"tgi-{uuid.uuid4().hex}")


def _tokens(llm: LLMService, o: CompletionOutput) -> list[dict]:
    """One TGI token per generated id. Their texts always join to exactly the output text: each
    token's own text when those add up, else the whole delta on the last token."""
    special = set(llm.tokenizer.all_special_ids)
    texts = [llm.token_texts.text(t) for t in o.token_ids]
    if "".join(texts) != o.text:
        texts = [""] * (len(texts) - 1) + [o.text] if texts else []
    logprobs = [next(iter(e.values())) for e in o.logprobs] if o.logprobs else [None] * len(o.token_ids)
    return [{"id": t, "text": text, "logprob": lp, "special": t in special}
            for t, text, lp in zip(o.token_ids, texts, logprobs)]


def _finish_reason(o: CompletionOutput | None) -> str:
    if o is None or o.finish_reason == "length":
        return "length"
    return "stop_sequence" if isinstance(o.stop_reason, (str, int)) else "eos_token"
