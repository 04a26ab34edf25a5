"""WHIP and WHEP clients (aiortc): a publisher like OBS (send-only video, plus audio nobody
needs) and a player (receive-only video) that counts what it gets. Used by `livecast bench
fanout` and the tests."""
from __future__ import annotations

import asyncio
import time

import httpx
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError


def _auth(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class VideoReceiver:
    """Collects the frames of a peer's incoming video track, with their arrival times."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.frames: list = []
        self.received_at: list[float] = []  # time.monotonic() of each frame in `frames`
        self.ended = asyncio.Event()
        self._reader: asyncio.Task | None = None
        pc.on("track", lambda track: setattr(self, "_reader", asyncio.ensure_future(self._read(track))))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.received_at.append(time.monotonic())
                self.frames.append(frame)
        except MediaStreamError:
            self.ended.set()

    async def wait_frames(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count:
            assert time.monotonic() < deadline, f"got {len(self.frames)} of {count} frames in {timeout}s"
            await asyncio.sleep(0.05)

    def stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()


class WhipPublisher:
    def __init__(self, base_url: str, camera: MediaStreamTrack, audio: bool = True, api_key: str | None = None) -> None:
        self.base_url, self.api_key, self.camera = base_url, api_key, camera
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver(camera, direction="sendonly")
        if audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        self.location: str | None = None

    async def publish(self, query: str = "", headers: dict | None = None) -> httpx.Response:
        """POST the offer to /v1/whip; on 201, take the answer. The response is returned as is."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as http:
            response = await http.post(f"/v1/whip{query}", content=self.pc.localDescription.sdp,
                                       headers={"Content-Type": "application/sdp", **_auth(self.api_key), **(headers or {})})
        if response.status_code == 201:
            self.location = response.headers["location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        return response

    @property
    def stream_id(self) -> str:
        return self.location.rsplit("/", 1)[1]

    async def close(self) -> None:
        await self.pc.close()


class WhepViewer(VideoReceiver):
    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        self.base_url, self.api_key = base_url, api_key
        self.pc = RTCPeerConnection()
        self.pc.addTransceiver("video", direction="recvonly")
        self.location: str | None = None
        super().__init__(self.pc)

    async def watch(self, stream_id: str) -> httpx.Response:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as http:
            response = await http.post(f"/v1/whep/{stream_id}", content=self.pc.localDescription.sdp,
                                       headers={"Content-Type": "application/sdp", **_auth(self.api_key)})
        if response.status_code == 201:
            self.location = response.headers["location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=response.text, type="answer"))
        return response

    async def close(self) -> None:
        await self.pc.close()
        self.stop_reading()
