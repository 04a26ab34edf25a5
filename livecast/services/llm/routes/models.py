"""GET /v1/models and /v1/models/{id}: the one model this server serves."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from livecast.services.llm.deps import get_llm
from livecast.services.llm.service import LLMService

router = APIRouter()


def _card(llm: LLMService) -> dict:
    return {"id": llm.model_name, "object": "model", "created": llm.created, "owned_by": "livecast",
            "max_model_len": llm.max_model_len}


@router.get("/v1/models")
async def list_models(llm: LLMService = Depends(get_llm)):
    return {"object": "list", "data": [_card(llm)]}


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, llm: LLMService = Depends(get_llm)):
    llm.check_model(model_id)
    return _card(llm)
