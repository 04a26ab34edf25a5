"""The app the media tests serve: the real `create_app`, small settings."""
from __future__ import annotations

from fastapi import FastAPI

from livecast.services.app import create_app
from livecast.engine import EngineConfig
from livecast.services.llm.config import LLMConfig
from livecast.services.media.config import MediaConfig
from livecast.services.settings import ServerSettings
from tests.live_server import light_agents


def build_app(diffusion: dict | None = None, llm_path=None, **overrides) -> FastAPI:
    """`diffusion`: None turns the media room off; else MediaConfig fields (resolution,
    max_video_sessions, latency_probe, ...). `overrides`: ServerSettings' own fields."""
    # browser, client and server share this machine
    media = MediaConfig(**{"ice_loopback": True, **(diffusion or {})})
    engine = EngineConfig(model=str(llm_path) if llm_path else None, dtype="float32", kv_cache_memory=64 << 20)
    settings = ServerSettings(enable_llm=llm_path is not None, enable_diffusion=diffusion is not None,
                              engine=engine, llm=LLMConfig(served_model_name="tiny"), diffusion=media,
                              **{**light_agents(), **overrides})
    return create_app(settings)
