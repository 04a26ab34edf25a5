"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter: LoRA adapters at run time, in vLLM's shapes.

Adapters are server-wide (every project's requests may name them), so changing the set is the
server operator's act: with API keys, only a key of the `default` project (the single --api-key,
or a keys-file key of project `default`) may load or unload; other projects get a 403. Loading
reads a folder on the server's disk, so it is also fenced to --lora-dir (see LLMService.load_lora).
"""
from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from livecast.services.errors import APIError
from livecast.services.llm.deps import get_llm
from livecast.services.llm.protocol import LoadLoraRequest, UnloadLoraRequest
from livecast.services.llm.service import LLMService
from livecast.services.projects import DEFAULT_PROJECT, Project

router = APIRouter()


def _operator(project: Project) -> None:
    if project != DEFAULT_PROJECT:
        raise APIError(403, f"adapters are server-wide: only a key of project {DEFAULT_PROJECT!r} may load or "
                            f"unload them (this key is of project {project!r})", type="permission_error",
                       code="permission_denied")


@router.post("/v1/load_lora_adapter", dependencies=[Depends(_operator)])
async def load_lora_adapter(body: LoadLoraRequest, llm: LLMService = Depends(get_llm)):
    await llm.load_lora(body.lora_name, body.lora_path)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", dependencies=[Depends(_operator)])
async def unload_lora_adapter(body: UnloadLoraRequest, llm: LLMService = Depends(get_llm)):
    await llm.unload_lora(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
