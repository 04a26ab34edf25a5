"""GET /v1/ws/frames: stylized frames over a WebSocket, pull-based, one frame in flight per client.

Client → binary JPEG/WebP/PNG frames (img2img), and JSON text: `{"type": "config", "mode":
"img2img" | "txt2img", "format": "jpeg" | "webp", "quality", …stream settings}`, `{"type": "next"}`
(txt2img: produce one frame for the current prompt; the page asks again after drawing it).
Server → `{"type": "hello", …}` once; per result a text `{"type": "frame", "seq", "latency_ms",
"width", "height", "format"}` followed by the binary image; `{"type": "stats", …}` every second;
`{"type": "error", "code", "message", "param"?, "seq"?}`, which never closes the socket.

Frames flow through a FramePump (services.media.pump): every hand-over keeps only the latest, so
a busy device lowers the frame rate, not the freshness, and a client that sends faster than the
server stylizes, or reads slower, never builds a backlog on the server.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect

from livecast.services.deps import admit_websocket, get_shell
from livecast.services.media.deps import get_media
from livecast.services.media.imageio import MEDIA_TYPES, decode_image, encode_image, image_format
from livecast.services.media.pump import FramePump
from livecast.services.media.service import MediaService, ServiceBusy
from livecast.services.media.stream_settings import param_error_name
from livecast.services.core import Shell

router = APIRouter()

MODES = ("img2img", "txt2img")


@router.websocket("/v1/ws/frames")
async def ws_frames(websocket: WebSocket, shell: Shell = Depends(get_shell),
                    service: MediaService = Depends(get_media)):
    if not await admit_websocket(websocket, shell):
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
    def __init__(self, websocket: WebSocket, service: MediaService, stream_id: str) -> None:
        self.websocket, self.service, self.stream_id = websocket, service, stream_id
        self.mode, self.format, self.quality = "img2img", "JPEG", 85
        # items: ("frame", bytes, seq, t) or ("next", None, None, t); tags: (seq, t)
        self.pump = FramePump(service, stream_id, "ws", self._convert, self._on_error,
                              is_frame=lambda item: item is not None and item[0] == "frame")
        self.stats = self.pump.stats
        self.errors: set[asyncio.Task] = set()
        self.send_lock = asyncio.Lock()
        self.seq = 0

    async def run(self) -> None:
        await self._send_json({"type": "hello", "mode": self.mode, "model": self.service.model_info,
                               "settings": self.service.stream_settings(self.stream_id)})
        tasks = [asyncio.create_task(self.pump.run()), asyncio.create_task(self._send_results()),
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
        self.pump.offer(("frame", data, self.seq, time.monotonic()))

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
            waiting = self.pump.slot.peek()
            if waiting is None or waiting[0] != "frame":
                self.pump.offer(("next", None, None, time.monotonic()), counts_as_input=False)
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
            settings = self.service.update_stream(self.stream_id, **message) if message else \
                self.service.stream_settings(self.stream_id)
        except ValueError as exc:
            return await self._error("invalid_settings", str(exc), param=param_error_name(str(exc)))
        self.mode, self.format, self.quality = mode, fmt, quality
        await self._send_json({"type": "config", "mode": mode, "format": fmt.lower(), "quality": quality,
                               "settings": settings})

    async def _convert(self, item) -> tuple | None:
        kind, data, seq, started = item
        if kind != "frame":
            return None, (seq, started)
        if self.mode != "img2img":
            await self._error("invalid_request", "binary frames are taken in img2img mode only", seq=seq)
            return None
        try:
            return await asyncio.to_thread(decode_image, data, self.service.default_size), (seq, started)
        except ValueError as exc:
            await self._error("invalid_image", str(exc), param="image", seq=seq)
            return None

    def _on_error(self, tag, error: BaseException) -> None:
        """A frame the pipeline rejected (e.g. NaN pixels): an error frame, the socket stays open."""
        task = asyncio.ensure_future(self._error("invalid_image", str(error), param="image", seq=tag[0]))
        self.errors.add(task)
        task.add_done_callback(self.errors.discard)

    async def _send_results(self) -> None:
        while True:
            image, (seq, started) = await self.pump.next_result()
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
