"""An aiortc client that measures a live stylization session: it sends a synthetic camera whose
frames carry ids in pixel blocks (services.media.probe) and matches the ids the server stamps back."""
from __future__ import annotations

import asyncio
import fractions
import time

import httpx
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from livecast.services.media.ice import use_loopback_only
from livecast.services.media.jitterbuffer import reassemble_on_marker
from livecast.services.media.probe import read_id, stamp_id

VIDEO_CLOCK = 90_000


class IdCamera(MediaStreamTrack):
    """A moving gradient at `fps`; frame i carries id i and its send time is recorded."""

    kind = "video"

    def __init__(self, fps: float, size: int) -> None:
        super().__init__()
        self.fps, self.size = fps, size
        self.count = 0
        self.sent_at: dict[int, float] = {}
        self._start: float | None = None
        yy, xx = np.mgrid[0:size, 0:size]
        self.base = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 96)], -1).astype(np.uint8)

    async def recv(self) -> VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.count / self.fps - time.monotonic()))
        rgb = np.roll(self.base, self.count * 3, axis=1)
        stamp_id(rgb, self.count)
        frame = VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = int(self.count * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent_at[self.count % 4096] = time.monotonic()
        self.count += 1
        return frame


class VideoProbe:
    """One WebRTC session against a server started with `--latency-probe`."""

    def __init__(self, base_url: str, fps: float = 20.0, size: int = 256) -> None:
        self.base_url = base_url
        use_loopback_only()  # the server runs with --ice-loopback: media stays on 127.0.0.1
        reassemble_on_marker()  # like a browser: a frame is decoded once its last packet is in
        self.camera = IdCamera(fps, size)
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTrack(self.camera)
        self.pc.createDataChannel("control")
        self.latencies_s: list[float] = []
        self.received: set[int] = set()
        self._reader: asyncio.Task | None = None
        self._measuring = False
        self.pc.on("track", lambda track: setattr(self, "_reader", asyncio.ensure_future(self._read(track))))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                frame_id = read_id(frame.to_ndarray(format="rgb24"))
                if self._measuring and frame_id is not None and frame_id not in self.received:
                    sent = self.camera.sent_at.get(frame_id)
                    if sent is not None:
                        self.received.add(frame_id)
                        self.latencies_s.append(now - sent)
        except MediaStreamError:
            pass

    async def connect(self, **settings) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer", **settings}
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as http:
            response = await http.post("/v1/webrtc/offer", json=body)
        response.raise_for_status()
        answer = response.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    def begin(self) -> None:
        """Start a measurement window."""
        self.latencies_s.clear()
        self.received.clear()
        self._sent_before, self._began = self.camera.count, time.monotonic()
        self._measuring = True

    def end(self) -> dict:
        """Glass-to-glass latency, output fps and drops over the window since begin()."""
        self._measuring = False
        seconds = time.monotonic() - self._began
        sent = self.camera.count - self._sent_before
        ordered = sorted(self.latencies_s)

        def pct(p: float) -> float:
            return 1000 * ordered[min(len(ordered) - 1, int(p * (len(ordered) - 1)))] if ordered else float("nan")

        return {"seconds": seconds, "frames_sent": sent, "frames_received": len(ordered),
                "fps_out": len(ordered) / seconds, "dropped_pct": 100.0 * (1 - len(ordered) / max(sent, 1)),
                "p50_ms": pct(0.5), "p95_ms": pct(0.95), "p99_ms": pct(0.99)}

    async def measure(self, seconds: float) -> dict:
        self.begin()
        await asyncio.sleep(seconds)
        return self.end()

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
