"""The app the media tests serve: the real `create_app`, small settings."""
from __future__ import annotations

from fastapi import FastAPI

from services.app import create_app
from services.settings import ServerSettings


def build_app(diffusion: dict | None = None, llm_path=None, **overrides) -> FastAPI:
    """`diffusion`: None turns the side off; else ServerSettings' diffusion fields, without the
    `diffusion_` prefix where they have one (resolution, max_video_sessions, latency_probe, ...)."""
    fields = {}
    overrides.setdefault("ice_loopback", True)  # browser, client and server share this machine
    for name, value in (diffusion or {}).items():
        fields[name if name in ServerSettings.__dataclass_fields__ else f"diffusion_{name}"] = value
    settings = ServerSettings(enable_llm=llm_path is not None, enable_diffusion=diffusion is not None,
                              model=str(llm_path) if llm_path else None, served_model_name="tiny",
                              dtype="float32", kv_cache_memory=64 << 20, **fields, **overrides)
    return create_app(settings)
