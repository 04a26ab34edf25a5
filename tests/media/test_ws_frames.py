"""GET /v1/ws/frames with the `websockets` client: img2img, txt2img pull mode, backpressure, errors."""
from __future__ import annotations

import asyncio
import io
import json
import threading
import time

import numpy as np
import PIL.Image
import websockets

from tests.media.rtc_client import MovingPattern


def _jpeg(index: int, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(MovingPattern().image(index)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


async def _next_json(ws, kind: str, timeout: float = 20.0) -> dict:
    """The next text message of type `kind`, skipping stats (and any binary payload)."""
    async def read():
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                data = json.loads(message)
                if data["type"] == kind:
                    return data
    return await asyncio.wait_for(read(), timeout)


async def _result(ws, timeout: float = 20.0) -> tuple[dict, PIL.Image.Image]:
    meta = await _next_json(ws, "frame", timeout)
    payload = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(payload, bytes)
    return meta, PIL.Image.open(io.BytesIO(payload))


def _url(server) -> str:
    return f"{server.ws_url}/v1/ws/frames"


async def test_img2img_round_trip_and_settings(media_server):
    async with websockets.connect(_url(media_server)) as ws:
        hello = await _next_json(ws, "hello")
        assert hello["mode"] == "img2img" and hello["model"]["name"] == "demo"
        await ws.send(json.dumps({"type": "config", "prompt": "oil painting", "strength": 1.0, "quality": 90}))
        config = await _next_json(ws, "config")
        assert config["settings"]["prompt"] == "oil painting" and config["format"] == "jpeg"
        await ws.send(_jpeg(0))
        meta, image = await _result(ws)
        assert meta["seq"] == 1 and meta["media_type"] == "image/jpeg" and image.format == "JPEG"
        assert image.size == (128, 96) == (meta["width"], meta["height"])
        source = np.asarray(PIL.Image.fromarray(MovingPattern().image(0)).resize(image.size), dtype=np.float32)
        assert np.abs(np.asarray(image.convert("RGB"), dtype=np.float32) - source).mean() > 15

        await ws.send(json.dumps({"type": "config", "format": "webp"}))
        await _next_json(ws, "config")
        await ws.send(_jpeg(1))
        meta, image = await _result(ws)
        assert meta["seq"] == 2 and image.format == "WEBP"


async def test_errors_never_close_the_socket(media_server):
    async with websockets.connect(_url(media_server)) as ws:
        await _next_json(ws, "hello")
        bad = [("not json", "invalid_json"), (json.dumps([1]), "invalid_json"),
               (json.dumps({"type": "dance"}), "invalid_request"),
               (json.dumps({"type": "next"}), "invalid_request"),  # img2img mode pulls by sending frames
               (json.dumps({"type": "config", "strength": 5}), "invalid_settings"),
               (json.dumps({"type": "config", "mode": "video"}), "invalid_settings"),
               (json.dumps({"type": "config", "format": "png"}), "invalid_settings"),
               (json.dumps({"type": "config", "nonsense": 1}), "invalid_settings"),
               (b"\x00\x01 definitely not an image", "invalid_image"),
               (_jpeg(0)[:200], "invalid_image")]  # truncated
        for message, code in bad:
            await ws.send(message)
            error = await _next_json(ws, "error")
            assert error["code"] == code, (message, error)
        await ws.send(_jpeg(3))
        meta, _ = await _result(ws)
        assert meta["seq"] == 3  # every binary message counts, bad ones included


async def test_slow_client_never_builds_a_server_backlog(media_server):
    service = media_server.diffusion
    num_sent = 60
    async with websockets.connect(_url(media_server), max_queue=None) as ws:
        await _next_json(ws, "hello")
        for i in range(num_sent):  # a burst far faster than the pipeline
            await ws.send(_jpeg(i))
            assert service.batcher.num_pending() <= 1
        await asyncio.sleep(1.5)  # read nothing for a while
        # the server holds at most one frame in flight and one waiting, whatever the client does
        assert service.batcher.num_pending() <= 1
        received = []
        while True:
            meta, _ = await _result(ws)
            received.append(meta["seq"])
            if meta["seq"] == num_sent:
                break
        stats = await _next_json(ws, "stats")
        assert stats["frames_in"] == num_sent
        assert stats["frames_out"] == len(received) < num_sent / 3
        assert stats["dropped"] == num_sent - len(received)
        assert received == sorted(received)  # the newest frame wins; none is answered twice


async def test_txt2img_streams_on_pull_and_follows_the_prompt(media_server):
    service = media_server.diffusion
    async with websockets.connect(_url(media_server)) as ws:
        await _next_json(ws, "hello")
        await ws.send(json.dumps({"type": "config", "mode": "txt2img", "prompt": "a red sun", "seed": 1}))
        assert (await _next_json(ws, "config"))["mode"] == "txt2img"
        images = []
        for _ in range(3):
            await ws.send(json.dumps({"type": "next"}))
            meta, image = await _result(ws)
            assert meta["seq"] is None and image.size == (128, 128)
            images.append(np.asarray(image.convert("RGB"), dtype=np.float32))
        # no pull, no frame: the server waits for the client
        await asyncio.sleep(0.5)
        frames_before = service.metrics.frames.labels("ws")._value.get()
        await asyncio.sleep(0.5)
        assert service.metrics.frames.labels("ws")._value.get() == frames_before
        # a new prompt changes the picture from the next frame on
        await ws.send(json.dumps({"type": "config", "prompt": "a blue ocean at night"}))
        await _next_json(ws, "config")
        await ws.send(json.dumps({"type": "next"}))
        _, changed = await _result(ws)
        changed = np.asarray(changed.convert("RGB"), dtype=np.float32)
        # same prompt and seed: the same picture (up to JPEG); the demo model's prompt effect is
        # subtle but far above that
        same_prompt_diff = np.abs(images[2] - images[1]).mean()
        assert same_prompt_diff < 0.2
        assert np.abs(changed - images[2]).mean() > max(0.5, 10 * same_prompt_diff)


async def test_client_limit(media_server):
    limit = media_server.diffusion.config.max_frame_clients
    sockets = [await websockets.connect(_url(media_server)) for _ in range(limit)]
    try:
        for ws in sockets:
            await _next_json(ws, "hello")
        async with websockets.connect(_url(media_server)) as extra:
            error = await _next_json(extra, "error")
            assert error["code"] == "too_many_clients"
            await asyncio.wait_for(extra.wait_closed(), 5)
            assert extra.close_code == 1013
    finally:
        for ws in sockets:
            await ws.close()
    for _ in range(100):
        if media_server.diffusion.frame_clients == 0:
            break
        await asyncio.sleep(0.05)
    assert media_server.diffusion.frame_clients == 0 and not media_server.diffusion.batcher.stream_ids()


async def test_a_busy_device_takes_the_newest_frame(media_server, monkeypatch):
    """While the device is busy (the batch is held at a gate), eight frames arrive; the batch that
    then runs takes the newest, and the seven it replaced are counted as dropped. Structural, not
    timed: it holds on a loaded machine too."""
    batcher = media_server.diffusion.batcher
    gate, take_batch = threading.Event(), batcher._take_batch

    def busy_then_take():
        gate.wait(30)
        return take_batch()

    monkeypatch.setattr(batcher, "_take_batch", busy_then_take)
    try:
        async with websockets.connect(_url(media_server)) as ws:
            await _next_json(ws, "hello")
            (stream_id,) = media_server.diffusion.batcher.stream_ids()
            deadline = time.monotonic() + 60
            for i in range(8):  # each one decoded and waiting in the batcher before the next is sent
                await ws.send(_jpeg(i))
                while batcher.stats(stream_id)["frames_in"] < i + 1:
                    assert time.monotonic() < deadline, batcher.stats(stream_id)
                    await asyncio.sleep(0.01)
            gate.set()
            meta, _ = await _result(ws, timeout=30)
            assert meta["seq"] == 8  # the newest frame, not the first one that woke the device
            stats = await _next_json(ws, "stats")
            assert stats["dropped"] == 7 and stats["frames_in"] == 8, stats
    finally:
        gate.set()
