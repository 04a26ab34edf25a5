"""Servers for the service tests: the real app under a real uvicorn on 127.0.0.1, in a thread."""
from __future__ import annotations

import contextlib
import time

import openai
import pytest

from livecast.services.app import create_app
from livecast.engine import EngineConfig
from livecast.services.llm.config import LLMConfig
from livecast.services.settings import ServerSettings
from tests.live_server import LiveServer, light_agents


class RunningServer(LiveServer):
    def __init__(self, settings: ServerSettings) -> None:
        super().__init__(create_app(settings))

    @property
    def llm(self):
        return self.app.state.llm

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def async_client(self, api_key: str = "unused", **kwargs) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until the engine holds no request and no KV block."""
        core = self.llm.engine.engine
        deadline = time.monotonic() + timeout
        while core.requests or core.block_manager.device.num_used:
            if time.monotonic() > deadline:
                raise AssertionError(f"engine not idle: {len(core.requests)} requests, "
                                     f"{core.block_manager.device.num_used} blocks in use")
            time.sleep(0.02)


@contextlib.contextmanager
def running_server(settings: ServerSettings):
    server = RunningServer(settings).start()
    try:
        yield server
    finally:
        server.stop()


def tiny_settings(path, engine: dict | None = None, **overrides) -> ServerSettings:
    """The tiny model served as "tiny"; `engine`: EngineConfig fields; the rest: ServerSettings'."""
    overrides.setdefault("enable_diffusion", False)  # LLM tests need no diffusion pipeline
    overrides = {**light_agents(), **overrides}
    engine = EngineConfig(model=str(path), dtype="float32", kv_cache_memory=64 << 20, **(engine or {}))
    return ServerSettings(engine=engine, llm=LLMConfig(served_model_name="tiny"), **overrides)


@pytest.fixture(scope="module")
def server(tiny_llama_path):
    """One tiny-model server per test module."""
    with running_server(tiny_settings(tiny_llama_path)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def http(server):
    with server.http() as c:
        yield c
