"""The media lifespan piece: load the pipeline, serve, and on the way out close every video
session once, then fail frames still waiting."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

from prometheus_client import CollectorRegistry

from livecast.services.media.config import DiffusionConfig
from livecast.services.media.service import DiffusionService
from livecast.services.runtime.threads import on_own_thread

logger = logging.getLogger("livecast.diffusion")


@asynccontextmanager
async def media_service(config: DiffusionConfig, registry: CollectorRegistry) -> AsyncIterator[DiffusionService]:
    from livecast.services.media.ice import use_loopback_only
    from livecast.services.media.jitterbuffer import reassemble_on_marker
    from livecast.services.media.webrtc import VideoSessions  # aiortc is only needed once the side is enabled

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
