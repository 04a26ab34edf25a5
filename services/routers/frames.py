"""GET /v1/ws/frames: stylized frames over a WebSocket, pull-based, one frame in flight per client.

Client → binary JPEG/WebP/PNG frames (img2img), and JSON text: `{"type": "config", "mode":
"img2img" | "txt2img", "format": "jpeg" | "webp", "quality", …stream settings}`, `{"type": "next"}`
(txt2img: produce one frame for the current prompt; the page asks again after drawing it).
Server → `{"type": "hello", …}` once; per result a text `{"type": "frame", "seq", "latency_ms",
"width", "height", "format"}` followed by the binary image; `{"type": "stats", …}` every second;
`{"type": "error", "code", "message", "param"?, "seq"?}`, which never closes the socket.

Every hand-over keeps only the latest: frames arriving faster than they are decoded replace the
one waiting in a depth-1 slot; decoded frames go to the batcher at once and replace one still
waiting there, so the device always starts on the freshest picture (a busy device lowers the
frame rate, not the freshness); results wait for the socket in another depth-1 slot. Replaced
frames are counted as dropped. A client that sends faster than the server stylizes, or reads
slower, never builds a backlog on the server.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect

from services.deps import api_key_error, get_diffusion, get_settings
from services.diffusion import CLIENT_PARAMS, DiffusionService, ServiceBusy, param_error_name
from services.frameflow import FrameStats, LatestSlot
from services.imageio import MEDIA_TYPES, decode_image, encode_image, image_format
from services.settings import ServerSettings
from streamdiff import FrameDropped

router = APIRouter()

MODES = ("img2img", "txt2img")


@router.websocket("/v1/ws/frames")
async def ws_frames(websocket: WebSocket, settings: ServerSettings = Depends(get_settings),
                    service: DiffusionService = Depends(get_diffusion)):
    error = api_key_error(websocket, settings)
    if error is not None:
        await websocket.close(code=1008, reason="invalid api key")
        return
    await websocket.accept()
    if service.frame_clients >= service.config.max_frame_clients:
        await websocket.send_json({"type": "error", "code": "too_many_clients",
                                   "message": f"all {service.config.max_frame_clients} frame clients are connected"})
        await websocket.close(code=1013, reason="try again later")
        return
    try:
        stream_id = service.open_stream()
    except ServiceBusy as exc:
        await websocket.send_json({"type": "error", "code": "server_overloaded", "message": str(exc)})
        await websocket.close(code=1013, reason="try again later")
        return
    service.frame_clients += 1
    try:
        await _FrameSession(websocket, service, stream_id).run()
    finally:
        service.frame_clients -= 1
        service.close_stream(stream_id)


class _FrameSession:
    def __init__(self, websocket: WebSocket, service: DiffusionService, stream_id: str) -> None:
        self.websocket, self.service, self.stream_id = websocket, service, stream_id
        self.mode, self.format, self.quality = "img2img", "JPEG", 85
        self.slot = LatestSlot()  # ("frame", bytes, seq, t) or ("next", None, None, t)
        self.results = LatestSlot()  # (image, seq, t) for the sender
        self.errors: set[asyncio.Task] = set()
        self.stats = FrameStats()
        self.send_lock = asyncio.Lock()
        self.seq = 0

    async def run(self) -> None:
        await self._send_json({"type": "hello", "mode": self.mode, "model": self.service.model_info,
                               "settings": self.service.stream_settings(self.stream_id)})
        tasks = [asyncio.create_task(self._work()), asyncio.create_task(self._send_results()),
                 asyncio.create_task(self._report())]
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    self._on_frame(message["bytes"])
                else:
                    await self._on_text(message.get("text") or "")
        except WebSocketDisconnect:
            pass
        finally:
            for task in tasks + list(self.errors):
                task.cancel()
            await asyncio.gather(*tasks, *self.errors, return_exceptions=True)

    def _on_frame(self, data: bytes) -> None:
        self.seq += 1
        self.stats.frames_in += 1
        waiting = self.slot.peek()
        if self.slot.put(("frame", data, self.seq, time.monotonic())) and waiting[0] == "frame":
            self.stats.dropped += 1
            self.service.metrics.frames_dropped.labels("ws").inc()

    async def _on_text(self, text: str) -> None:
        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError("a message must be a JSON object")
        except ValueError as exc:
            return await self._error("invalid_json", f"message is not a JSON object: {exc}")
        kind = message.pop("type", None)
        if kind == "next":
            if self.mode != "txt2img":
                return await self._error("invalid_request", "`next` only applies in txt2img mode")
            waiting = self.slot.peek()
            if waiting is None or waiting[0] != "frame":
                self.slot.put(("next", None, None, time.monotonic()))
        elif kind == "config":
            await self._configure(message)
        else:
            await self._error("invalid_request", f"type must be config or next, got {kind!r}")

    async def _configure(self, message: dict[str, Any]) -> None:
        try:
            mode = message.pop("mode", self.mode)
            if mode not in MODES:
                raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
            fmt = image_format(str(message.pop("format", self.format)))
            if fmt == "PNG":
                raise ValueError("format must be jpeg or webp for live frames")
            quality = message.pop("quality", self.quality)
            if not isinstance(quality, int) or not 1 <= quality <= 100:
                raise ValueError(f"quality must be an int in [1, 100], got {quality!r}")
            unknown = set(message) - set(CLIENT_PARAMS)
            if unknown:
                raise ValueError(f"unknown setting(s) {sorted(unknown)}")
            settings = self.service.update_stream(self.stream_id, **message) if message else \
                self.service.stream_settings(self.stream_id)
        except ValueError as exc:
            return await self._error("invalid_settings", str(exc), param=param_error_name(str(exc)))
        self.mode, self.format, self.quality = mode, fmt, quality
        await self._send_json({"type": "config", "mode": mode, "format": fmt.lower(), "quality": quality,
                               "settings": settings})

    async def _work(self) -> None:
        fit = self.service.default_size
        while True:
            kind, data, seq, started = await self.slot.get()
            frame = None
            if kind == "frame":
                if self.mode != "img2img":
                    await self._error("invalid_request", "binary frames are taken in img2img mode only", seq=seq)
                    continue
                try:
                    frame = await asyncio.to_thread(decode_image, data, fit)
                except ValueError as exc:
                    await self._error("invalid_image", str(exc), param="image", seq=seq)
                    continue
            try:
                result = self.service.submit(self.stream_id, frame, "ws")
            except ValueError as exc:
                await self._error("invalid_image", str(exc), param="image", seq=seq)
                continue
            result.add_done_callback(lambda done, tag=(seq, started): self._on_result(done, *tag))

    def _on_result(self, done: asyncio.Future, seq: int, started: float) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if isinstance(error, FrameDropped):  # a newer frame replaced it in the batcher
            self.stats.dropped += 1
            self.service.metrics.frames_dropped.labels("ws").inc()
        elif error is not None:  # the pipeline rejected it (e.g. NaN pixels)
            task = asyncio.ensure_future(self._error("invalid_image", str(error), param="image", seq=seq))
            self.errors.add(task)
            task.add_done_callback(self.errors.discard)
        elif self.results.put((done.result(), seq, started)):
            self.stats.dropped += 1

    async def _send_results(self) -> None:
        while True:
            image, seq, started = await self.results.get()
            payload = await asyncio.to_thread(encode_image, image, self.format, self.quality)
            latency_ms = self.stats.frame_done(started)
            meta = {"type": "frame", "seq": seq, "latency_ms": round(latency_ms, 2), "width": image.width,
                    "height": image.height, "format": self.format.lower(), "media_type": MEDIA_TYPES[self.format]}
            async with self.send_lock:  # meta and bytes stay adjacent; awaiting here is the backpressure
                await self.websocket.send_text(json.dumps(meta))
                await self.websocket.send_bytes(payload)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self._send_json({"type": "stats", **self.stats.tick()})

    async def _error(self, code: str, message: str, param: str | None = None, seq: int | None = None) -> None:
        payload = {"type": "error", "code": code, "message": message}
        if param is not None:
            payload["param"] = param
        if seq is not None:
            payload["seq"] = seq
        await self._send_json(payload)

    async def _send_json(self, payload: dict) -> None:
        async with self.send_lock:
            await self.websocket.send_text(json.dumps(payload))
