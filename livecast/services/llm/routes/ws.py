"""GET /v1/ws/generate: token streaming over a WebSocket, many generations multiplexed by id.

Client → `{"type": "generate", "id", "messages" | "prompt", "model"?, …sampling}` (`model`: the base or
a loaded LoRA adapter) and `{"type": "cancel", "id"}`.
Server → `{"type": "delta", "id", "text", "token_ids"}`, then `{"type": "done", "id",
"finish_reason", "usage"}` (`"abort"` after a cancel), or `{"type": "error", "id"?, "code",
"message"}`; an error never closes the socket. Closing the socket aborts what is still running.
"""
from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, WebSocket
from pydantic import ValidationError

from livecast.services.deps import admit_websocket, get_shell
from livecast.services.llm.deps import get_llm
from livecast.services.errors import APIError, validation_error
from livecast.services.llm.service import LLMService
from livecast.services.request_base import has_lone_surrogate
from livecast.services.llm.protocol import WSGenerate
from livecast.services.core import Shell

router = APIRouter()

_OUTBOX_SIZE = 256


@router.websocket("/v1/ws/generate")
async def ws_generate(websocket: WebSocket, shell: Shell = Depends(get_shell),
                      llm: LLMService = Depends(get_llm)):
    if not await admit_websocket(websocket, shell):
        return
    if llm.ws_connections >= llm.max_ws_connections:
        await websocket.close(code=1013, reason="too many WebSocket connections; try again later")
        return
    await websocket.accept()
    llm.ws_connections += 1
    try:
        await _Session(websocket, llm, shell.max_body_bytes).run()
    finally:
        llm.ws_connections -= 1


@dataclass(slots=True)
class _Generation:
    request_id: str
    task: asyncio.Task | None = None
    cancelled: bool = False


@dataclass
class _Session:
    websocket: WebSocket
    llm: LLMService
    max_message_bytes: int
    outbox: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=_OUTBOX_SIZE))
    active: dict[str, _Generation] = field(default_factory=dict)

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
                if len(text) > self.max_message_bytes:  # as HTTP bodies: --max-body-mb
                    await self._error("message_too_large", f"a message may be at most {self.max_message_bytes} "
                                                           "bytes (--max-body-mb)")
                    continue
                await self._handle(text)
        finally:
            tasks = [g.task for g in self.active.values() if g.task is not None]
            for task in tasks + [writer]:
                task.cancel()  # closing their streams aborts the requests
            await asyncio.gather(*tasks, writer, return_exceptions=True)

    async def _write(self) -> None:
        while True:
            await self.websocket.send_text(_dumps(await self.outbox.get()))

    async def _error(self, code: str, message: str, id=None) -> None:
        await self.outbox.put({"type": "error", **({"id": id} if id is not None else {}), "code": code,
                               "message": message})

    async def _handle(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError as exc:
            return await self._error("invalid_json", f"message is not valid JSON: {exc}")
        if not isinstance(message, dict):
            return await self._error("invalid_request", "a message must be a JSON object")
        id, kind = message.get("id"), message.get("type")
        if kind == "cancel":
            generation = self.active.get(str(id))
            if generation is None:
                return await self._error("unknown_id", f"no generation with id {id!r} is running", id)
            generation.cancelled = True
            self.llm.engine.abort(generation.request_id)
        elif kind == "generate":
            await self._start(message)
        else:
            await self._error("invalid_request", f"type must be generate or cancel, got {kind!r}", id)

    async def _start(self, message: dict) -> None:
        id = message.get("id")
        try:
            request = WSGenerate.model_validate(message)
            if str(request.id) in self.active:
                raise APIError(400, f"id {request.id!r} is already running", param="id")
            if len(self.active) >= self.llm.max_ws_streams:
                raise APIError(400, f"at most {self.llm.max_ws_streams} generations may run on one socket")
            if (request.prompt is None) == (request.messages is None):
                raise APIError(400, "send exactly one of prompt or messages", param="prompt")
            if request.n != 1:
                raise APIError(400, "n must be 1 on the WebSocket", param="n")
            lora = self.llm.resolve_model(request.model)
            if request.messages is not None:
                prompt = await self.llm.encode_chat([m.model_dump(exclude_none=True) for m in request.messages])
            else:
                prompt = request.prompt
            params = request.sampling_params(max_tokens=request.max_tokens, lora=lora)
        except ValidationError as exc:
            return await self._error("invalid_request", validation_error(list(exc.errors())).message, id)
        except APIError as exc:
            return await self._error(_code(exc), exc.message, id)
        generation = _Generation(f"ws-{uuid.uuid4().hex}")
        self.active[str(request.id)] = generation
        generation.task = asyncio.create_task(self._generate(request.id, generation, prompt, params))

    async def _generate(self, id, generation: _Generation, prompt, params) -> None:
        try:
            if generation.cancelled:  # cancelled before the request reached the engine
                usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
                return await self.outbox.put({"type": "done", "id": id, "finish_reason": "abort", "usage": usage})
            num_tokens = 0
            stream = await self.llm.open_stream(prompt, params, generation.request_id)
            async with aclosing(stream):
                async for out in stream:
                    o = out.outputs[0]
                    num_tokens += len(o.token_ids)
                    if o.text or o.token_ids:
                        await self.outbox.put({"type": "delta", "id": id, "text": o.text, "token_ids": o.token_ids})
                    if out.finished:
                        prompt_tokens = len(out.prompt_token_ids)
                        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": num_tokens,
                                 "total_tokens": prompt_tokens + num_tokens}
                        await self.outbox.put({"type": "done", "id": id, "finish_reason": o.finish_reason,
                                               "usage": usage})
        except APIError as exc:
            await self._error(_code(exc), exc.message, id)
        finally:
            self.active.pop(str(id), None)


def _code(error: APIError) -> str:
    return error.code or ("invalid_request" if error.status == 400 else error.type)


def _dumps(payload: dict) -> str:
    """JSON text for the socket; escaped to ASCII when it holds text that is not valid Unicode
    (an id echoed back with a lone surrogate in it), which a UTF-8 frame cannot carry."""
    text = json.dumps(payload, ensure_ascii=False)
    return text if not has_lone_surrogate(text) else json.dumps(payload)
