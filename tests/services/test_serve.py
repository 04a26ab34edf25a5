"""`livecast serve`: flags → settings, a real server process, and an app with the LLM side off."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from livecast.services.app import create_app
from livecast.services.llm.deps import get_llm
from livecast.services.errors import APIError
from livecast.services.llm.routes import models
from livecast.services.serve import parse_settings
from livecast.engine import EngineConfig
from livecast.services.llm.config import LLMConfig
from livecast.services.runtime.memory import MemoryConfig
from livecast.services.runtime.policy import RuntimePolicy
from livecast.services.settings import ServerSettings


def test_flags_become_settings():
    settings, _ = parse_settings([])
    assert (settings.host, settings.port, settings.api_key, settings.enable_llm, settings.enable_diffusion) == \
        ("127.0.0.1", 8000, None, True, True)
    settings, _ = parse_settings(["--port", "9001", "--model", "/m", "--api-key", "k", "--max-queue", "7",
                                  "--no-llm", "--no-diffusion", "--kv-cache-gb", "0.5"])
    assert (settings.port, settings.engine.model, settings.api_key, settings.engine.max_waiting) == (9001, "/m", "k", 7)
    assert not settings.enable_llm and not settings.enable_diffusion
    assert settings.engine.kv_cache_memory == 1 << 29
    # every default is its config's own: the flags without values build the same configs
    assert (settings.llm, settings.runtime, settings.memory) == (LLMConfig(), RuntimePolicy(), MemoryConfig())
    assert parse_settings([])[0].engine == EngineConfig()


@pytest.mark.parametrize("bad", [["--port", "70000"], ["--max-queue", "0"], ["--dtype", "int3"],
                                 ["--video-share", "1.5"], ["--max-ws-streams", "0"], ["--memory-budget-gb", "-1"]])
def test_bad_settings_fail_fast(bad):
    with pytest.raises(ValueError):
        parse_settings(bad)


def test_app_without_llm_serves_health_only():
    app = create_app(ServerSettings(enable_llm=False, enable_diffusion=False))
    with TestClient(app) as client:
        body = client.get("/health").json()
        assert {k: body[k] for k in ("status", "llm", "diffusion")} == {"status": "ok", "llm": None, "diffusion": None}
        assert body["runtime"]["running"] and body["runtime"]["llm_steps"] == 0
        assert client.get("/v1/models").status_code == 404
        metrics = client.get("/metrics").text  # the runtime reports; the LLM room is off, so no LLM metrics
        assert "livecast_runtime_llm_steps_total" in metrics and "livecast_time_to_first_token" not in metrics


def test_dependency_override_swaps_the_engine():
    app = create_app(ServerSettings(enable_llm=False, enable_diffusion=False))
    app.include_router(models.router)  # an LLM route, with the LLM swapped out below

    def unavailable():
        raise APIError(503, "warming up", code="llm_unavailable", headers={"Retry-After": "5"})
    app.dependency_overrides[get_llm] = unavailable
    with TestClient(app) as client:
        r = client.get("/v1/models")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "llm_unavailable"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_livecast_serve_process(tiny_llama_path, tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "livecast.services.cli", "serve", "--port", str(port), "--model", str(tiny_llama_path),
         "--dtype", "float32", "--kv-cache-gb", "0.0625", "--api-key", "sk-test", "--served-model-name", "tiny",
         "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
                                           extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 3
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log.close()
