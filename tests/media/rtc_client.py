"""aiortc clients for the video tests: a synthetic moving camera; RTCClient for /v1/webrtc/offer
(a `control` channel, everything the server sends back collected for assertions); Publisher
(OBS-like, WHIP) and Player (WHEP)."""
from __future__ import annotations

import asyncio
import fractions
import json
import time

import httpx
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from av import VideoFrame

from livecast.services.bench.whip_client import VideoReceiver, WhepViewer, WhipPublisher

VIDEO_CLOCK = 90_000


class MovingPattern(MediaStreamTrack):
    """A 160x120 gradient with a moving bright square, at `fps`."""

    kind = "video"

    def __init__(self, fps: int = 30, width: int = 160, height: int = 120) -> None:
        super().__init__()
        self.fps, self.width, self.height = fps, width, height
        self.count = 0
        self._start: float | None = None
        yy, xx = np.mgrid[0:height, 0:width]
        self.base = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], -1).astype(np.uint8)

    def image(self, index: int) -> np.ndarray:
        rgb = self.base.copy()
        x = (index * 4) % (self.width - 32)
        rgb[40:72, x:x + 32] = 255
        return rgb

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self.count / self.fps
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        frame = VideoFrame.from_ndarray(self.image(self.count), format="rgb24")
        frame.pts = self.count * VIDEO_CLOCK // self.fps
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.count += 1
        return frame


class RTCClient(VideoReceiver):
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        super().__init__(self.pc)
        self.camera = MovingPattern()
        self.messages: list[dict] = []
        self.session_id: str | None = None
        self.channel = self.pc.createDataChannel("control")
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.pc.addTrack(self.camera)

    async def connect(self, headers: dict | None = None, **settings) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **settings}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30, headers=headers) as http:
            response = await http.post("/v1/webrtc/offer", json=body)
        if response.status_code == 200:
            answer = response.json()
            self.session_id = answer["session_id"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return response

    async def wait_message(self, predicate, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if predicate(message):
                    return message
            assert time.monotonic() < deadline, f"no matching control message; got {self.messages[-5:]}"
            await asyncio.sleep(0.05)

    def send(self, payload: dict) -> None:
        self.channel.send(json.dumps(payload))

    async def close(self) -> None:
        await self.pc.close()
        self.stop_reading()


class Publisher(WhipPublisher):
    """OBS-like, with the moving pattern at 20 fps."""

    def __init__(self, base_url: str, **kwargs) -> None:
        super().__init__(base_url, MovingPattern(fps=20), **kwargs)


Player = WhepViewer
