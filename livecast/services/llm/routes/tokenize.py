"""POST /tokenize and /detokenize: the server's tokenizer and chat template, as vLLM serves them."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from livecast.services.errors import APIError
from livecast.services.llm.deps import get_llm
from livecast.services.llm.protocol import DetokenizeRequest, TokenizeRequest
from livecast.services.llm.service import LLMService

router = APIRouter()


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, llm: LLMService = Depends(get_llm)):
    llm.resolve_model(body.model)  # an adapter shares the base's tokenizer: only an unknown name matters
    if body.prompt is not None and body.messages is not None:
        raise APIError(400, "send one of prompt or messages, not both", param="prompt")
    if body.messages is not None:
        tools = [t.model_dump(exclude_none=True) for t in body.tools or []] or None
        ids = await llm.encode_chat([m.model_dump(exclude_none=True) for m in body.messages], tools,
                                  body.add_generation_prompt)
    else:
        ids = await llm.encode(body.prompt or "", add_special_tokens=body.add_special_tokens)
    return {"count": len(ids), "max_model_len": llm.max_model_len, "tokens": ids,
            "token_strs": [llm.token_texts.text(t) for t in ids]}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, llm: LLMService = Depends(get_llm)):
    llm.resolve_model(body.model)
    return {"prompt": llm.decode(body.tokens)}
