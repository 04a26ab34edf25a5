"""Load and disconnects on a real server (uvicorn on 127.0.0.1), bounded in count and time."""
from __future__ import annotations

import asyncio
import io
import random
import time

import httpx
import PIL.Image
import pytest
import websockets

from tests.live_server import LiveServer
from tests.media.app import build_app

MESSAGES = [{"role": "user", "content": "Count to three."}]


async def test_256_concurrent_streams_complete_with_exact_usage(server, http):
    prompt_tokens = http.post("/tokenize", json={"messages": MESSAGES}).json()["count"]

    async def one(client, i: int):
        max_tokens = 3 + i % 4
        stream = await client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=max_tokens, temperature=0.7, seed=i, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = [c async for c in stream]
        usage = chunks[-1].usage
        return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens), max_tokens

    limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
    async with httpx.AsyncClient(limits=limits, timeout=300) as transport, \
            server.async_client(http_client=transport) as client:
        results = await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(256))), 600)
    for (prompt, completion, total), max_tokens in results:
        assert (prompt, completion, total) == (prompt_tokens, max_tokens, prompt_tokens + max_tokens)
    server.wait_idle()


async def test_random_disconnects_leave_no_kv_blocks(server):
    rng = random.Random(7)
    core = server.llm.engine.engine

    async def one(client, i: int):
        stream = await client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=200, stream=True,
                                                      extra_body={"ignore_eos": True})
        leave_after = rng.randint(1, 12)
        async for n, _chunk in _enumerate(stream):
            if n >= leave_after:
                break
        await stream.close()  # gone mid-stream, as a closed tab would be

    async with server.async_client() as client:
        await asyncio.wait_for(asyncio.gather(*(one(client, i) for i in range(32))), 300)
    server.wait_idle(60)
    assert core.block_manager.device.num_used == 0 and not core.requests


async def _enumerate(stream):
    n = 0
    async for chunk in stream:
        n += 1
        yield n, chunk


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.effect_noise((64, 64), 20 + seed).convert("RGB").save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_rss_stays_flat_over_repeated_media_sessions():
    server = LiveServer(build_app(diffusion=dict(resolution=64))).start()
    try:
        async def session(i: int) -> None:
            async with websockets.connect(f"{server.ws_url}/v1/ws/frames") as ws:
                await ws.recv()  # hello
                for k in range(3):
                    await ws.send(_jpeg(i + k))
                got = 0
                while got < 1:
                    message = await asyncio.wait_for(ws.recv(), 60)
                    got += isinstance(message, bytes)

        for i in range(5):  # warm up: caches, pools, first allocations
            await session(i)
        before = _rss_mb()
        for i in range(25):
            await session(i)
        growth = _rss_mb() - before
        assert growth < 40, f"RSS grew {growth:.1f} MB over 25 sessions"
        # the server closes a stream in its handler's `finally`, which may run just after the
        # client's close handshake returns: give it a bounded moment, then it must be gone
        batcher = server.app.state.media.batcher
        deadline = time.monotonic() + 10
        while batcher.stream_ids() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not batcher.stream_ids()
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _quiet_httpx_logs(caplog):
    caplog.set_level("WARNING", logger="httpx")
