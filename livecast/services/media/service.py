"""The diffusion side of the server: one StreamPipeline and its StreamBatcher behind MediaService.

Every route that makes pictures (WebRTC video, WebSocket frames, the images API) opens a batcher
stream, submits frames and awaits the batcher's futures with `asyncio.wrap_future`; no model work
ever runs on the event loop. The device runtime steps the batcher (services.runtime).
`media_service(config, registry)` is the room's lifespan: load the pipeline, serve, and on the way
out close every video session once, then fail frames still waiting.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import PIL.Image
from prometheus_client import CollectorRegistry

from livecast.services.media.config import MediaConfig
from livecast.services.media.metrics import MediaMetrics, LiveCollector
from livecast.services.media.stream_settings import StreamSettings, settings_json
from livecast.services.runtime.threads import on_own_thread
from livecast.streamdiff import StreamBatcher, StreamPipeline
from livecast.streamdiff.config import StreamParams
from livecast.streamdiff.demo import describe_weights
from livecast.streamdiff.image import Frame

logger = logging.getLogger("livecast.media")


class ServiceBusy(Exception):
    """Every batcher stream is taken; the caller should answer 503."""


class MediaService:
    """Owns the pipeline and the batcher; hands out streams; awaits frames off the event loop."""

    def __init__(self, pipe: StreamPipeline, config: MediaConfig | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config or MediaConfig()
        self.pipe = pipe
        self.batcher = StreamBatcher(pipe, self.config.max_batch_size, self.config.max_streams)
        self.metrics = MediaMetrics(registry or CollectorRegistry())
        self._collector = LiveCollector(self)
        self.metrics.registry.register(self._collector)
        self.video = None  # services.media.video_sessions.VideoSessions, attached by the media lifespan
        self.broadcasts = None  # services.media.broadcast.Broadcasts (WHIP/WHEP), attached likewise
        self.frame_clients = 0  # open /v1/ws/frames sockets
        self._started = False

    @property
    def model_info(self) -> dict[str, Any]:
        return self.pipe.model_info

    @property
    def size_multiple(self) -> int:
        return self.pipe.states.size_multiple

    @property
    def default_size(self) -> tuple[int, int]:
        """(width, height) streams work at unless they ask otherwise."""
        return self.pipe.states.default_size

    def health(self) -> dict[str, Any]:
        info = self.model_info
        return {"model": info["name"], "demo": info["demo"], "weights": describe_weights(info["name"], info["demo"]),
                "device": info["device"], "dtype": info["dtype"],
                "resolution": info["resolution"], "controlnet": info["controlnet"], "streams": self.num_streams,
                "video_sessions": len(self.video.snapshot()) if self.video is not None else 0,
                "max_video_sessions": self.config.max_video_sessions, "latency_probe": self.config.latency_probe,
                "whip_sources": len(self.broadcasts.sources) if self.broadcasts is not None else 0,
                "whep_viewers": self.broadcasts.num_viewers() if self.broadcasts is not None else 0,
                "healthy": self._started}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        """Fail frames still waiting (FrameDropped), so no client awaits a batch that never runs."""
        self._started = False
        await asyncio.to_thread(self.batcher.stop)
        self.metrics.registry.unregister(self._collector)
        self.metrics.close()

    # -- streams: the batcher holds each stream's settings; the service keeps no copy ---------
    @property
    def num_streams(self) -> int:
        return len(self.batcher.stream_ids())

    def open_stream(self, **settings: Any) -> str:
        """A new batcher stream; ValueError on a bad setting, ServiceBusy when all are taken."""
        if self.num_streams >= self.config.max_streams:
            raise ServiceBusy(f"all {self.config.max_streams} diffusion streams are in use")
        stream_id = uuid.uuid4().hex
        self.batcher.add_stream(stream_id, **settings)
        return stream_id

    def update_stream(self, stream_id: str, **changes: Any) -> dict[str, Any]:
        """Apply `changes` (checked as StreamSettings) from the next frame on; returns the
        stream's settings after them. KeyError: no such stream."""
        return _settings(self.batcher.update_stream(stream_id, **StreamSettings.changes(changes)))

    def stream_settings(self, stream_id: str) -> dict[str, Any]:
        return _settings(self.batcher.params(stream_id))

    def close_stream(self, stream_id: str) -> None:
        with contextlib.suppress(KeyError):  # closing twice is fine
            self.batcher.remove_stream(stream_id)

    def submit(self, stream_id: str, frame: Frame | None, source: str) -> asyncio.Future:
        """Queue one frame (None: txt2img) as the stream's next; the future resolves to the image,
        or fails with FrameDropped when a newer frame replaces it first (latest wins) and with
        ValueError for a frame the pipeline rejects. KeyError: no such stream."""
        start = time.monotonic()
        result = asyncio.wrap_future(self.batcher.submit(stream_id, frame))
        result.add_done_callback(lambda done: self._account(done, source, start))
        return result

    def _account(self, done: asyncio.Future, source: str, start: float) -> None:
        if not done.cancelled() and done.exception() is None:
            self.metrics.frames.labels(source).inc()
            self.metrics.frame_latency.labels(source).observe(time.monotonic() - start)

    async def process(self, stream_id: str, frame: Frame | None, source: str) -> PIL.Image.Image:
        """One frame through the batcher: `submit` and wait."""
        return await self.submit(stream_id, frame, source)

    async def generate(self, jobs: list[tuple[dict[str, Any], Frame | None]]) -> list[PIL.Image.Image]:
        """One-shot images: each (settings, frame or None) gets a fresh stream, so its first frame
        is fully denoised; all are submitted together and share the batcher's UNet calls."""
        if self.num_streams + len(jobs) > self.config.max_streams:
            raise ServiceBusy(f"all {self.config.max_streams} diffusion streams are in use")
        ids: list[str] = []
        try:
            for params, _ in jobs:
                ids.append(self.open_stream(**params))
            futures = [self.batcher.submit(i, frame) for i, (_, frame) in zip(ids, jobs)]
            start = time.monotonic()
            images = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            self.metrics.frames.labels("images").inc(len(images))
            self.metrics.frame_latency.labels("images").observe(time.monotonic() - start)
            return list(images)
        finally:
            for stream_id in ids:
                self.close_stream(stream_id)


def _settings(params: StreamParams) -> dict[str, Any]:
    """The settable part of a stream's params, as plain JSON values."""
    return settings_json(params)


@asynccontextmanager
async def media_service(config: MediaConfig, registry: CollectorRegistry) -> AsyncIterator[MediaService]:
    from livecast.services.media.ice import use_loopback_only
    from livecast.services.media.jitterbuffer import reassemble_on_marker
    from livecast.services.media.broadcast import Broadcasts  # aiortc is only needed once the side is enabled
    from livecast.services.media.video_sessions import VideoSessions

    reassemble_on_marker()
    if config.ice_loopback:
        use_loopback_only()
    pipe = await on_own_thread(config.load_pipeline)  # not an executor thread: see on_own_thread
    service = MediaService(pipe, config, registry)
    service.video = VideoSessions(service, config.max_video_sessions, latency_probe=config.latency_probe)
    service.broadcasts = Broadcasts(service, config.max_whip_sources, config.max_whep_viewers)
    service.start()
    logger.info("diffusion: serving %s", service.model_info)
    try:
        yield service
    finally:
        await service.broadcasts.close_all()
        await service.video.close_all()
        await service.stop()
