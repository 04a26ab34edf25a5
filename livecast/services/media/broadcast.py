"""WHIP sources and WHEP viewers: one stylized stream per publisher, fanned out to many viewers.

A source is a WHIP publisher (OBS Studio, GStreamer's `whipsink`, ffmpeg): its video track feeds
a FramePump into one batcher stream, so the UNet runs once per source frame whatever the number
of viewers. Each result becomes one `yuv420p` VideoFrame, handed to every viewer's own depth-1
slot (latest wins): a slow viewer drops frames for itself only, never slows the source or the
other viewers. A viewer is a WHEP peer whose outgoing track reads its slot. aiortc gives every
sender its own encoder (VP8/H.264 state is per peer), so the shared part is the picture and its
colour conversion; a new viewer's encoder starts on a keyframe, and a viewer's PLI gets another,
so a viewer joining mid-stream has a picture at once.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from livecast.services.media.peer import OfferError, Peer, SessionLimit, negotiate
from livecast.services.media.pump import FramePump, FrameStats, LatestSlot
from livecast.services.media.video_sessions import to_frame, to_rgb

if TYPE_CHECKING:
    from livecast.services.media.service import MediaService

logger = logging.getLogger("livecast.media")


class UnknownStream(KeyError):
    """No source (or viewer) of that id: a 404."""


class ViewerTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, viewer: Viewer) -> None:
        super().__init__()
        self.viewer = viewer

    async def recv(self) -> VideoFrame:
        frame = await self.viewer.slot.get()
        if frame is None:  # the source ended
            self.stop()
            raise MediaStreamError
        self.viewer.frames_sent += 1
        return frame


class Viewer(Peer):
    def __init__(self, source: Source) -> None:
        super().__init__(source.owner)
        self.source = source
        self.slot = LatestSlot()  # the newest stylized frame this viewer has not sent yet
        self.frames_sent = self.frames_dropped = 0

    def _forget(self) -> None:
        self.source.viewers.pop(self.id, None)
        self.slot.put(None)  # ends the outgoing track

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.pc.connectionState, "created": int(self.created),
                "frames_sent": self.frames_sent, "frames_dropped": self.frames_dropped}


class Source(Peer):
    """A WHIP publisher: its video through one batcher stream, its results to every viewer."""

    def __init__(self, owner: Broadcasts, stream_id: str, project: str) -> None:
        super().__init__(owner)
        self.stream_id, self.project = stream_id, project
        self.service = owner.service
        self.pump = FramePump(self.service, stream_id, "whip", self._convert)
        self.stats: FrameStats = self.pump.stats
        self.viewers: dict[str, Viewer] = {}
        self.has_input = False
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "video":  # OBS sends audio too: drain it, nobody hears it
            self.spawn(_drain(track))
            return
        if self.has_input:
            return
        self.has_input = True
        self.spawn(self._read(track))
        self.spawn(self.pump.run())
        self.spawn(self._fan_out())

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                self.pump.offer((await track.recv(), time.monotonic()))
        except MediaStreamError:  # the publisher hung up
            self.close()

    async def _convert(self, item) -> tuple:
        frame, arrived = item
        rgb, _ = await asyncio.to_thread(to_rgb, frame, self.service.default_size, False)
        return rgb, (frame, arrived)

    async def _fan_out(self) -> None:
        """Each result once to every viewer: one colour conversion, a depth-1 slot per viewer."""
        while True:
            image, (frame, arrived) = await self.pump.next_result()
            out = await asyncio.to_thread(_to_yuv, image)
            out.pts, out.time_base = frame.pts, frame.time_base
            self.stats.frame_done(arrived)
            for viewer in list(self.viewers.values()):
                if viewer.slot.put(out):
                    viewer.frames_dropped += 1

    def _forget(self) -> None:
        self.owner.sources.pop(self.id, None)
        self.service.close_stream(self.stream_id)  # fails a waiting frame with FrameDropped
        for viewer in list(self.viewers.values()):
            viewer.close()

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "object": "stream", "created": int(self.created), "state": self.pc.connectionState,
                "viewers": len(self.viewers), "settings": self.service.stream_settings(self.stream_id),
                "stats": self.stats.snapshot(), "viewer_stats": [v.info() for v in self.viewers.values()]}


class Broadcasts:
    """Every WHIP source and WHEP viewer of the server, bounded by `max_sources` and
    `max_viewers` (viewers of all sources together)."""

    def __init__(self, service: MediaService, max_sources: int, max_viewers: int) -> None:
        self.service, self.max_sources, self.max_viewers = service, max_sources, max_viewers
        self.sources: dict[str, Source] = {}
        self.peers: set[RTCPeerConnection] = set()

    def num_viewers(self) -> int:
        return sum(len(s.viewers) for s in self.sources.values())

    async def publish(self, sdp: str, settings: dict[str, Any], project: str) -> tuple[Source, str]:
        """Answer a WHIP offer: (the source, the answer SDP); the source belongs to `project`.
        Raises SessionLimit, OfferError, or ValueError / ServiceBusy from opening the batcher
        stream; nothing stays allocated."""
        if len(self.sources) >= self.max_sources:
            raise SessionLimit(f"all {self.max_sources} WHIP sources are in use; retry later")
        stream_id = self.service.open_stream(**settings)  # settings errors first
        source = Source(self, stream_id, project)
        self.sources[source.id] = source
        return source, await self._answer(source, sdp, lambda: source.has_input, "the offer has no video track to stylize")

    async def watch(self, source_id: str, sdp: str, project: str) -> tuple[Viewer, str]:
        """Answer a WHEP offer for `source_id`'s stylized video: (the viewer, the answer SDP)."""
        source = self.get(source_id, project)
        if self.num_viewers() >= self.max_viewers:
            raise SessionLimit(f"all {self.max_viewers} WHEP viewers are in use; retry later")
        viewer = Viewer(source)
        source.viewers[viewer.id] = viewer
        track = ViewerTrack(viewer)

        def attach() -> bool:  # after the remote offer: our track goes on its video transceiver
            kinds = [t.kind for t in viewer.pc.getTransceivers()]
            if kinds.count("video") != 1:
                return False
            viewer.pc.addTrack(track)
            return True
        return viewer, await self._answer(viewer, sdp, attach, "the offer must receive one video track")

    async def _answer(self, peer: Peer, sdp: str, ready, missing: str) -> str:
        try:
            await negotiate(peer.pc, sdp, "offer", ready, missing)
        except OfferError:
            await peer.close()
            raise
        peer.watch()
        return peer.pc.localDescription.sdp

    def get(self, source_id: str, project: str) -> Source:
        """The project's source: another project's is as missing as one that never was."""
        source = self.sources.get(source_id)
        if source is None or source.project != project:
            raise UnknownStream(f"no stream {source_id!r}")
        return source

    def viewer(self, source_id: str, viewer_id: str, project: str) -> Viewer:
        try:
            return self.get(source_id, project).viewers[viewer_id]
        except KeyError:
            raise UnknownStream(f"no viewer {viewer_id!r} of stream {source_id!r}") from None

    def snapshot(self, project: str) -> list[dict[str, Any]]:
        return [source.info() for source in list(self.sources.values()) if source.project == project]

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.sources.values())), return_exceptions=True)
        await asyncio.gather(*(pc.close() for pc in list(self.peers)), return_exceptions=True)
        self.peers.clear()


async def _drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass


def _to_yuv(image) -> VideoFrame:
    """The encoders' own format, converted once for every viewer."""
    return to_frame(image, None).reformat(format="yuv420p")
