"""WebRTC live stylization: one aiortc peer per session, every peer in one set, closed on shutdown.

Per session, a reader task drains the browser's track into a FramePump (services.media.pump):
latest wins at every hand-over, so a busy device (an LLM step running) lowers the output frame
rate, not the latency of the frames that come out. The outgoing track's `recv()` takes results
with the input's pts/time_base. A `control` data channel takes JSON setting updates and
receives stats every second. The media lifespan owns `VideoSessions` and closes them once.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from livecast.services.media import probe
from livecast.services.media.peer import OfferError, Peer, SessionLimit, check_offer, negotiate
from livecast.services.media.pump import FramePump
from livecast.services.media.stream_settings import param_error_name

if TYPE_CHECKING:
    from livecast.services.media.service import MediaService

logger = logging.getLogger("livecast.media")


class StylizedTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, session: VideoSession) -> None:
        super().__init__()
        self.session = session

    async def recv(self) -> VideoFrame:
        return await self.session.next_frame()


class VideoSession(Peer):
    def __init__(self, owner: VideoSessions, stream_id: str | None, project: str = "default") -> None:
        super().__init__(owner)
        self.stream_id, self.project = stream_id, project
        self.service = owner.service
        self.pump = FramePump(self.service, stream_id, "webrtc", self._convert)
        self.stats = self.pump.stats
        self.channel = None
        self.has_input = False
        # frames are scaled to fit the working size first (passthrough too: same transport cost)
        self.max_size = self.service.default_size
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)

    # -- events ------------------------------------------------------------------------------
    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video" or self.has_input:
            return
        self.has_input = True
        self.pc.addTrack(StylizedTrack(self))
        self.spawn(self._read(track))
        if self.stream_id is not None:
            self.spawn(self.pump.run())

    def _on_datachannel(self, channel) -> None:
        if channel.label != "control":
            return
        self.channel = channel
        channel.on("message", self._on_control)
        self._send({"type": "hello", "session_id": self.id, "settings": self.settings()})

    def _on_state(self) -> None:
        super()._on_state()
        if self.pc.connectionState == "connected" and not any(t.get_name() == "stats" for t in self._tasks):
            self.spawn(self._report(), name="stats")

    def _on_control(self, message) -> None:
        try:
            update = json.loads(message)
            if not isinstance(update, dict):
                raise ValueError("a control message must be a JSON object")
            update.pop("type", None)
            if self.stream_id is None:
                raise ValueError("a passthrough session has no settings to change")
            settings = self.service.update_stream(self.stream_id, **update)
        except KeyError:  # the session is closing: its stream is gone
            return None
        except ValueError as exc:
            return self._send({"type": "error", "message": str(exc), "param": param_error_name(str(exc))})
        self._send({"type": "settings", "settings": settings})

    def _send(self, payload: dict) -> None:
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(json.dumps(payload))

    # -- frames ------------------------------------------------------------------------------
    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                self.pump.offer((await track.recv(), time.monotonic()))
        except MediaStreamError:  # the browser hung up
            self.close()

    async def _convert(self, item) -> tuple:
        frame, arrived = item
        rgb, frame_id = await asyncio.to_thread(to_rgb, frame, self.max_size, self.owner.latency_probe)
        return rgb, (frame, arrived, frame_id)

    async def next_frame(self) -> VideoFrame:
        if self.stream_id is None:  # passthrough: the latest input, round-tripped through RGB
            image, (frame, arrived, frame_id) = await self._convert(await self.pump.slot.get())
        else:
            image, (frame, arrived, frame_id) = await self.pump.next_result()
        out = await asyncio.to_thread(to_frame, image, frame_id)
        out.pts, out.time_base = frame.pts, frame.time_base
        self.stats.frame_done(arrived)
        return out

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._send({"type": "stats", **self.stats.tick()})

    # -- lifecycle -----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any] | None:
        return self.service.stream_settings(self.stream_id) if self.stream_id else None

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.pc.connectionState, "passthrough": self.stream_id is None,
                "created": int(self.created), "settings": self.settings(), "stats": self.stats.snapshot()}

    def _forget(self) -> None:
        """Free the session's slot and batcher stream at once (the peer closes soon after)."""
        self.owner.sessions.pop(self.id, None)
        if self.stream_id is not None:
            self.service.close_stream(self.stream_id)  # fails a waiting frame with FrameDropped

    def _closed(self) -> None:
        logger.info("video session %s closed after %d frames", self.id, self.stats.frames_out)


class VideoSessions:
    """All live sessions of the server, bounded by `max_sessions`."""

    def __init__(self, service: MediaService, max_sessions: int, latency_probe: bool = False) -> None:
        self.service, self.max_sessions, self.latency_probe = service, max_sessions, latency_probe
        self.peers: set[RTCPeerConnection] = set()
        self.sessions: dict[str, VideoSession] = {}

    async def answer(self, sdp: str, sdp_type: str, settings: dict[str, Any], passthrough: bool = False,
                     project: str = "default") -> dict:
        """Answer an offer (non-trickle: the answer carries all candidates). Raises SessionLimit,
        OfferError, or ValueError / ServiceBusy from opening the batcher stream."""
        if len(self.sessions) >= self.max_sessions:
            raise SessionLimit(f"all {self.max_sessions} video sessions are in use; retry later")
        stream_id = None if passthrough else self.service.open_stream(**settings)  # settings errors first
        try:
            check_offer(sdp)
        except OfferError:
            if stream_id is not None:
                self.service.close_stream(stream_id)
            raise
        session = VideoSession(self, stream_id, project)
        self.sessions[session.id] = session
        try:
            await negotiate(session.pc, sdp, sdp_type, lambda: session.has_input, "the offer has no video track to stylize")
        except OfferError:
            await session.close()
            raise
        session.watch()
        local = session.pc.localDescription
        return {"sdp": local.sdp, "type": local.type, "session_id": session.id}

    def snapshot(self, project: str | None = None) -> list[dict[str, Any]]:
        """Every session, or `project`'s."""
        return [session.info() for session in list(self.sessions.values())
                if project is None or session.project == project]

    async def close(self, session_id: str, project: str) -> bool:
        """Close `project`'s session; False when it has none of that id (another project's included)."""
        session = self.sessions.get(session_id)
        if session is None or session.project != project:
            return False
        await session.close()
        return True

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sessions.values())), return_exceptions=True)
        await asyncio.gather(*(pc.close() for pc in list(self.peers)), return_exceptions=True)
        self.peers.clear()


def to_rgb(frame: VideoFrame, max_size: tuple[int, int], read_probe: bool) -> tuple[np.ndarray, int | None]:
    """The frame scaled to fit `max_size` (aspect kept, even sides) as (H, W, 3) uint8 RGB."""
    scale = min(1.0, max_size[0] / frame.width, max_size[1] / frame.height)
    width, height = max(2, round(frame.width * scale / 2) * 2), max(2, round(frame.height * scale / 2) * 2)
    rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
    return rgb, probe.read_id(rgb) if read_probe else None


def to_frame(image, frame_id: int | None) -> VideoFrame:
    rgb = np.array(image, dtype=np.uint8)  # a writable copy: the probe stamps on it
    if frame_id is not None:
        probe.stamp_id(rgb, frame_id)
    return VideoFrame.from_ndarray(rgb, format="rgb24")
