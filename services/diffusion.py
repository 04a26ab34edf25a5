"""The diffusion side of the server: one StreamPipeline and its StreamBatcher behind DiffusionService.

Every route that makes pictures (WebRTC video, WebSocket frames, the images API) opens a batcher
stream, submits frames and awaits the batcher's futures with `asyncio.wrap_future`; no model work
ever runs on the event loop. Who calls `batcher.step()` is the constructor's `drive_batcher`
choice: the batcher's own thread (standalone), or a device runtime that steps it.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import PIL.Image
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from streamdiff import StreamBatcher, StreamPipeline
from streamdiff.components import resolve_device, resolve_dtype
from streamdiff.config import StreamParams
from streamdiff.image import Frame

logger = logging.getLogger("livecast.diffusion")

# Stream settings a client may change (HTTP bodies, WebRTC control channel, WebSocket config).
CLIENT_PARAMS = ("prompt", "negative_prompt", "strength", "t_index_list", "guidance_scale", "seed",
                 "similarity_filter", "delta", "num_inference_steps")
_FRAME_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class ServiceBusy(Exception):
    """Every batcher stream is taken; the caller should answer 503."""


@dataclass(slots=True)
class DiffusionConfig:
    """What the diffusion side needs from ServerSettings (copied, validated once)."""

    model: str = "demo"
    device: str | None = None
    dtype: str = "auto"  # auto: the pipeline's own choice (fp16 on CUDA, bf16 on CPU)
    resolution: int | None = None  # working side in pixels; None: the model's own
    max_batch_size: int = 8
    max_streams: int = 64
    max_video_sessions: int = 4
    max_frame_clients: int = 16
    latency_probe: bool = False  # WebRTC: read frame ids stamped in pixels, stamp them on the output
    ice_loopback: bool = False  # WebRTC media on 127.0.0.1 only (see services.ice)
    drive_batcher: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_streams", "max_video_sessions", "max_frame_clients"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"resolution must be >= 8 pixels, got {self.resolution}")
        if self.dtype != "auto":
            resolve_dtype(self.dtype, resolve_device("cpu"))  # ValueError on an unknown name

    def load_pipeline(self) -> StreamPipeline:
        # on an idle 2-core CPU bf16 is as fast as fp32 at 128 px and 21% faster at 256 px
        dtype = None if self.dtype == "auto" else self.dtype
        options = {"resolution": self.resolution} if self.resolution else {}
        return StreamPipeline.from_pretrained(self.model, device=self.device, dtype=dtype, **options)


class DiffusionMetrics:
    """Frame counters and latencies by source (`webrtc`, `ws`, `images`) on the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.frames = Counter("livecast_diffusion_frames", "Frames generated, by source.", ["source"],
                              registry=registry)
        self.frames_dropped = Counter("livecast_diffusion_frames_dropped",
                                      "Input frames dropped because a newer one replaced them, by source.",
                                      ["source"], registry=registry)
        self.frame_latency = Histogram("livecast_diffusion_frame_latency_seconds",
                                       "Frame submitted to the batcher -> frame generated, by source.",
                                       ["source"], buckets=_FRAME_BUCKETS, registry=registry)

    def close(self) -> None:
        """Leave the registry (an app whose lifespan runs again registers afresh)."""
        for metric in (self.frames, self.frames_dropped, self.frame_latency):
            self.registry.unregister(metric)


class _LiveCollector(Collector):
    """Gauges read at scrape time: live sessions, their output fps, frames waiting."""

    def __init__(self, service: DiffusionService) -> None:
        self.service = service

    def collect(self):
        video = self.service.video
        sessions = video.snapshot() if video is not None else []
        yield GaugeMetricFamily("livecast_video_sessions", "Open WebRTC video sessions.", value=len(sessions))
        yield GaugeMetricFamily("livecast_video_output_fps", "Stylized frames per second, all sessions.",
                                value=sum(s["stats"]["output_fps"] for s in sessions))
        yield GaugeMetricFamily("livecast_diffusion_frames_pending", "Frames waiting for the batcher.",
                                value=self.service.batcher.num_pending())

    def describe(self):
        return []


class DiffusionService:
    """Owns the pipeline and the batcher; hands out streams; awaits frames off the event loop."""

    def __init__(self, pipe: StreamPipeline, config: DiffusionConfig | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config or DiffusionConfig()
        self.pipe = pipe
        self.batcher = StreamBatcher(pipe, self.config.max_batch_size, self.config.max_streams)
        self.metrics = DiffusionMetrics(registry or CollectorRegistry())
        self._collector = _LiveCollector(self)
        self.metrics.registry.register(self._collector)
        self.video = None  # services.video.VideoSessions, attached by diffusion_server()
        self.frame_clients = 0  # open /v1/ws/frames sockets
        self._params: dict[str, dict[str, Any]] = {}  # what each stream was last set to
        self.on_submit = None  # the device runtime's wake-up, when it (not our thread) steps the batcher
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
        return {"model": info["name"], "demo": info["demo"], "device": info["device"], "dtype": info["dtype"],
                "resolution": info["resolution"], "streams": len(self._params),
                "video_sessions": len(self.video.snapshot()) if self.video is not None else 0,
                "max_video_sessions": self.config.max_video_sessions, "latency_probe": self.config.latency_probe,
                "healthy": self._started}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.config.drive_batcher:
            self.batcher.start()
        self._started = True

    async def stop(self) -> None:
        self._started = False
        if self.config.drive_batcher:
            await asyncio.to_thread(self.batcher.stop)  # joins the stepping thread
        self.metrics.registry.unregister(self._collector)
        self.metrics.close()

    # -- streams -----------------------------------------------------------------------------
    def open_stream(self, **params: Any) -> str:
        """A new batcher stream; ValueError on a bad setting, ServiceBusy when all are taken."""
        if len(self._params) >= self.config.max_streams:
            raise ServiceBusy(f"all {self.config.max_streams} diffusion streams are in use")
        stream_id = uuid.uuid4().hex
        self.batcher.add_stream(stream_id, **params)
        self._params[stream_id] = _settings(StreamParams(**_as_param_kwargs(params)))
        return stream_id

    def update_stream(self, stream_id: str, **changes: Any) -> dict[str, Any]:
        """Apply `changes` from the next frame on; returns the stream's settings after them."""
        unknown = set(changes) - set(CLIENT_PARAMS)
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; settable: {list(CLIENT_PARAMS)}")
        self.batcher.update_stream(stream_id, **changes)
        self._params[stream_id].update(changes)
        return dict(self._params[stream_id])

    def stream_settings(self, stream_id: str) -> dict[str, Any]:
        return dict(self._params[stream_id])

    def close_stream(self, stream_id: str) -> None:
        if self._params.pop(stream_id, None) is not None:
            self.batcher.remove_stream(stream_id)

    def submit(self, stream_id: str, frame: Frame | None, source: str) -> asyncio.Future:
        """Queue one frame (None: txt2img) as the stream's next; the future resolves to the image,
        or fails with FrameDropped when a newer frame replaces it first (latest wins) and with
        ValueError for a frame the pipeline rejects. KeyError: no such stream."""
        start = time.monotonic()
        result = asyncio.wrap_future(self._submit(stream_id, frame))
        result.add_done_callback(lambda done: self._account(done, source, start))
        return result

    def _account(self, done: asyncio.Future, source: str, start: float) -> None:
        if not done.cancelled() and done.exception() is None:
            self.metrics.frames.labels(source).inc()
            self.metrics.frame_latency.labels(source).observe(time.monotonic() - start)

    async def process(self, stream_id: str, frame: Frame | None, source: str) -> PIL.Image.Image:
        """One frame through the batcher: `submit` and wait."""
        return await self.submit(stream_id, frame, source)

    def _submit(self, stream_id: str, frame: Frame | None):
        future = self.batcher.submit(stream_id, frame)
        if self.on_submit is not None:
            self.on_submit()
        return future

    async def generate(self, jobs: list[tuple[dict[str, Any], Frame | None]]) -> list[PIL.Image.Image]:
        """One-shot images: each (settings, frame or None) gets a fresh stream, so its first frame
        is fully denoised; all are submitted together and share the batcher's UNet calls."""
        if len(self._params) + len(jobs) > self.config.max_streams:
            raise ServiceBusy(f"all {self.config.max_streams} diffusion streams are in use")
        ids: list[str] = []
        try:
            for params, _ in jobs:
                ids.append(self.open_stream(**params))
            futures = [self._submit(i, frame) for i, (_, frame) in zip(ids, jobs)]
            start = time.monotonic()
            images = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
            self.metrics.frames.labels("images").inc(len(images))
            self.metrics.frame_latency.labels("images").observe(time.monotonic() - start)
            return list(images)
        finally:
            for stream_id in ids:
                self.close_stream(stream_id)


def _as_param_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("t_index_list") is not None:
        params = {**params, "t_index_list": tuple(params["t_index_list"])}
    return params


def _settings(params: StreamParams) -> dict[str, Any]:
    values = {name: getattr(params, name) for name in CLIENT_PARAMS}
    if values["t_index_list"] is not None:
        values["t_index_list"] = list(values["t_index_list"])
    return values


def param_error_name(message: str) -> str | None:
    """The setting a streamdiff ValueError is about (its messages start with the field name)."""
    first = message.split(" ", 1)[0].split("=", 1)[0]
    return first if first in CLIENT_PARAMS or first in ("width", "height") else None


@asynccontextmanager
async def diffusion_server(config: DiffusionConfig, registry: CollectorRegistry) -> AsyncIterator[DiffusionService]:
    """The lifespan piece: load the pipeline (in a worker thread), start, serve, then close every
    WebRTC peer before stopping the batcher."""
    from services.device import on_own_thread
    from services.ice import use_loopback_only
    from services.jitterbuffer import reassemble_on_marker
    from services.video import VideoSessions  # aiortc is only needed once the side is enabled

    reassemble_on_marker()
    if config.ice_loopback:
        use_loopback_only()
    pipe = await on_own_thread(config.load_pipeline)  # not an executor thread: see on_own_thread
    service = DiffusionService(pipe, config, registry)
    service.video = VideoSessions(service, config.max_video_sessions, latency_probe=config.latency_probe)
    service.start()
    logger.info("diffusion: serving %s", service.model_info)
    try:
        yield service
    finally:
        await service.video.close_all()
        await service.stop()
