"""GET /v1/models and /v1/models/{id}: the base model and each LoRA adapter loaded on it
(an adapter's card has vLLM's `parent`, the base's id, and `root`, its folder)."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from livecast.engine.lora import LoraAdapter
from livecast.services.llm.deps import get_llm
from livecast.services.llm.service import LLMService, model_not_found

router = APIRouter()


def _card(llm: LLMService, adapter: LoraAdapter | None = None) -> dict:
    if adapter is None:
        return {"id": llm.model_name, "object": "model", "created": llm.created, "owned_by": "livecast",
                "max_model_len": llm.max_model_len}
    return {"id": adapter.name, "object": "model", "created": adapter.created, "owned_by": "livecast",
            "parent": llm.model_name, "root": adapter.path}


@router.get("/v1/models")
async def list_models(llm: LLMService = Depends(get_llm)):
    adapters = list(llm.loras.values())  # one snapshot: an unload may run meanwhile
    return {"object": "list", "data": [_card(llm)] + [_card(llm, a) for a in adapters]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, llm: LLMService = Depends(get_llm)):
    lora = llm.resolve_model(model_id)
    if lora is None:
        return _card(llm)
    adapter = llm.loras.get(lora)
    if adapter is None:  # unloaded since
        raise model_not_found(model_id)
    return _card(llm, adapter)
