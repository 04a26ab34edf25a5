"""Both engines in one app: a chat stream and a WebRTC video stream at the same time, a large
LLM batch beside live video, each side alone, and shutdown under load."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai

from tests.media.app import build_app
from tests.media.conftest import running
from tests.media.rtc_client import RTCClient


async def _chat(url: str, max_tokens: int, n: int = 1) -> list:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    async def one(i):
        text, usage = "", None
        stream = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        return usage.completion_tokens
    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_chat_and_video_cohosted(tiny_llama_path):
    app = build_app(diffusion=dict(resolution=64), llm_path=tiny_llama_path)
    with running(app) as server:
        video = RTCClient(server.url)
        try:
            assert (await video.connect(prompt="ink drawing", strength=0.6)).status_code == 200
            await video.wait_frames(5, timeout=30)
            # one chat stream beside the video: both complete
            before = len(video.frames)
            assert await _chat(server.url, 24) == [24]
            # a large LLM batch: video keeps producing frames while it runs
            start = time.monotonic()
            batch = asyncio.ensure_future(_chat(server.url, 64, n=32))
            during = len(video.frames)
            while not batch.done():
                await asyncio.sleep(0.1)
            assert await batch == [64] * 32
            elapsed = time.monotonic() - start
            frames_during = len(video.frames) - during
            assert len(video.frames) > before
            assert frames_during >= max(3, int(elapsed * 3)), (frames_during, elapsed)
            runtime = app.state.runtime
            assert runtime.stats.llm_steps > 0 and runtime.stats.diffusion_batches > 0
            health = httpx.get(f"{server.url}/health").json()
            assert health["llm"]["healthy"] and health["diffusion"]["demo"] is True
            assert health["runtime"]["running"] and health["runtime"]["policy"]["video_share"] == 0.4
            assert health["runtime"]["diffusion_batches"] >= 1 and health["runtime"]["llm_steps"] >= 1
            assert "livecast_runtime_deadline_misses" in httpx.get(f"{server.url}/metrics").text
        finally:
            await video.close()


async def test_each_side_alone_and_shutdown_under_load(tiny_llama_path):
    with running(build_app(diffusion=None, llm_path=tiny_llama_path)) as llm_only:
        assert await _chat(llm_only.url, 8) == [8]
        assert httpx.post(f"{llm_only.url}/v1/images/generations", json={"prompt": "x"}).status_code == 404
    with running(build_app(diffusion=dict(resolution=64))) as video_only:
        r = httpx.post(f"{video_only.url}/v1/images/generations", json={"prompt": "a red fox", "size": "64x64"},
                       timeout=60)
        assert r.status_code == 200 and r.json()["data"][0]["b64_json"]
        assert httpx.get(f"{video_only.url}/v1/models").status_code == 404
    # shutdown while 16 long generations and a video session are in flight returns promptly
    app = build_app(diffusion=dict(resolution=64), llm_path=tiny_llama_path)
    server = running(app)
    live = server.__enter__()
    video = RTCClient(live.url)
    await video.connect(prompt="x")
    load = asyncio.ensure_future(_chat(live.url, 500, n=16))
    await asyncio.sleep(1.0)
    start = time.monotonic()
    await asyncio.to_thread(server.__exit__, None, None, None)
    assert time.monotonic() - start < 20
    load.cancel()
    await video.close()
    assert app.state.runtime is None  # the lifespan finished
