"""Diffusion metrics on the app's registry: frame counters and latencies by source, and live gauges."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

_FRAME_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class MediaMetrics:
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


class LiveCollector(Collector):
    """Gauges read at scrape time: live sessions, their output fps, frames waiting."""

    def __init__(self, service) -> None:
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


