"""Style LoRAs in the media room: --diffusion-loras at startup, the `lora` / `lora_scale` stream
settings over the WebSocket frames protocol and the settings path the WebRTC control channel
shares, and the images API. A live server on the demo architecture with random weights (demo-random:
random adapters move its pictures clearly) at 64 px with two random adapters."""
from __future__ import annotations

import asyncio
import base64
import io
import json

import numpy as np
import PIL.Image
import pytest
import torch
import websockets

from livecast.services.media.config import MediaConfig
from livecast.services.media.service import MediaService
from livecast.services.media.stream_settings import SETTABLE, StreamSettings, param_error_name
from livecast.services.serve import parse_settings
from livecast.streamdiff.demo import build_random_components
from livecast.streamdiff.lora_format import LoraError, save_random_adapter
from tests.media.conftest import running
from tests.media.app import build_app
from tests.streamdiff.conftest import make_pipe

SIDE = 64
MODEL = "demo-random"


@pytest.fixture(scope="module")
def demo_adapters(tmp_path_factory):
    unet = build_random_components("demo-random")["unet"]
    root = tmp_path_factory.mktemp("loras")
    return {name: save_random_adapter(unet, root / name, seed=seed, rank=4, std=0.2)
            for name, seed in (("ink", 1), ("neon", 2))}


@pytest.fixture(scope="module")
def server(demo_adapters):
    loras = ",".join(f"{name}={path}" for name, path in demo_adapters.items())
    with running(build_app(diffusion=dict(model=MODEL, resolution=SIDE, loras=loras, max_diffusion_loras=1))) as live:
        yield live


def _image(item: dict) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"), np.float32)


def _png(side: int = SIDE) -> bytes:
    y, x = np.mgrid[0:side, 0:side]
    array = np.stack([x * 4, y * 4, 255 - x * 4], -1).astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_flag_and_settings_carry_lora():
    settings, _ = parse_settings(["--diffusion-loras", "ink=/a/ink, neon=/b", "--max-diffusion-loras", "3"])
    assert settings.diffusion.lora_paths == {"ink": "/a/ink", "neon": "/b"}
    assert settings.diffusion.max_diffusion_loras == 3
    for bad in ("ink", "=/a", "ink=/a,ink=/b"):
        with pytest.raises(ValueError, match="--diffusion-loras"):
            MediaConfig(loras=bad)
    assert {"lora", "lora_scale"} <= set(SETTABLE)
    assert StreamSettings.changes({"lora": None, "lora_scale": 2}) == {"lora": None, "lora_scale": 2.0}
    with pytest.raises(ValueError, match="^lora_scale input should be a valid number") as caught:
        StreamSettings.changes({"lora_scale": "big"})
    assert param_error_name(str(caught.value)) == "lora_scale"


def test_startup_fails_naming_a_malformed_adapter(demo_adapters, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    config = MediaConfig(model=MODEL, resolution=SIDE, loras=f"ink={demo_adapters['ink']},broken={bad}")
    with pytest.raises(LoraError, match=r"^LoRA 'broken' \(.*bad\.safetensors\)"):
        config.load_pipeline()
    with pytest.raises(LoraError, match=r"^LoRA 'gone' .*no such LoRA file"):
        MediaConfig(model=MODEL, resolution=SIDE, loras=f"gone={tmp_path / 'gone.safetensors'}").load_pipeline()


def test_service_settings_switch_lora_for_the_next_frame(tmp_path):
    # The WebRTC control channel and WebSocket configs both land in MediaService.update_stream.
    from tests.streamdiff.test_lora import make_adapter

    pipe = make_pipe()
    pipe.load_lora("x", str(make_adapter(tmp_path / "x", 1)))
    service = MediaService(pipe)
    try:
        stream_id = service.open_stream(prompt="a cat", seed=1, strength=0.5, num_inference_steps=2)
        assert service.stream_settings(stream_id)["lora"] is None
        settings = service.update_stream(stream_id, lora="x", lora_scale=0.5)
        assert (settings["lora"], settings["lora_scale"]) == ("x", 0.5)
        assert service.pipe.loras.names == ["x"]
        with pytest.raises(ValueError, match="^lora 'y' is not a registered adapter") as caught:
            service.update_stream(stream_id, lora="y")
        assert param_error_name(str(caught.value)) == "lora"
        assert service.stream_settings(stream_id)["lora"] == "x"
    finally:
        asyncio.run(service.stop())


def test_images_api_takes_lora(server):
    with server.http() as http:
        assert http.get("/health").status_code == 200
        body = {"prompt": "a lighthouse", "seed": 3, "num_inference_steps": 1}
        plain = http.post("/v1/images/generations", json=body)
        assert plain.status_code == 200, plain.text
        styled = [http.post("/v1/images/generations", json={**body, "lora": name}) for name in ("ink", "neon")]
        assert all(r.status_code == 200 for r in styled), [r.text for r in styled]
        base = _image(plain.json()["data"][0])
        ink, neon = (_image(r.json()["data"][0]) for r in styled)
        assert np.abs(ink - base).mean() > 1 and np.abs(neon - ink).mean() > 1
        again = http.post("/v1/images/generations", json={**body, "lora": "ink"})  # LRU of 1: reloaded
        assert np.abs(_image(again.json()["data"][0]) - ink).mean() < 0.5
        unknown = http.post("/v1/images/generations", json={**body, "lora": "nope"})
        assert unknown.status_code == 400, unknown.text
        error = unknown.json()["error"]
        assert error["param"] == "lora" and "nope" in error["message"] and "ink, neon" in error["message"]
        bad_scale = http.post("/v1/images/generations", json={**body, "lora": "ink", "lora_scale": 9})
        assert bad_scale.status_code == 400 and bad_scale.json()["error"]["param"] == "lora_scale"
        edit = http.post("/v1/images/edits", files={"image": ("in.png", _png(), "image/png")},
                         data={"prompt": "ink", "lora": "ink", "lora_scale": "0.5", "seed": "1"})
        assert edit.status_code == 200, edit.text
        edit_unknown = http.post("/v1/images/edits", files={"image": ("in.png", _png(), "image/png")},
                                 data={"prompt": "ink", "lora": "nope"})
        assert edit_unknown.status_code == 400 and edit_unknown.json()["error"]["param"] == "lora"
    assert server.diffusion.num_streams == 0


async def _next(ws, kind: str, timeout: float = 30.0) -> dict:
    async def read():
        while True:
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == kind:
                return json.loads(message)
    return await asyncio.wait_for(read(), timeout)


async def _frame(ws) -> np.ndarray:
    await _next(ws, "frame")
    payload = await asyncio.wait_for(ws.recv(), 30)
    return np.asarray(PIL.Image.open(io.BytesIO(payload)).convert("RGB"), np.float32)


async def test_ws_frames_switch_lora_mid_stream(server):
    async with websockets.connect(f"{server.ws_url}/v1/ws/frames") as ws:
        await _next(ws, "hello")
        await ws.send(json.dumps({"type": "config", "prompt": "city", "seed": 4, "strength": 0.5,
                                  "num_inference_steps": 2, "format": "webp", "quality": 100}))
        assert (await _next(ws, "config"))["settings"]["lora"] is None
        await ws.send(_png())
        plain = await _frame(ws)
        await ws.send(json.dumps({"type": "config", "lora": "neon", "lora_scale": 1.5}))
        settings = (await _next(ws, "config"))["settings"]
        assert settings["lora"] == "neon" and settings["lora_scale"] == 1.5
        await ws.send(_png())
        styled = await _frame(ws)  # the very next frame has the adapter
        assert np.abs(styled - plain).mean() > 1
        await ws.send(json.dumps({"type": "config", "lora": "nope"}))
        error = await _next(ws, "error")
        assert error["code"] == "invalid_settings" and error["param"] == "lora"
        await ws.send(json.dumps({"type": "config", "lora": None}))
        assert (await _next(ws, "config"))["settings"]["lora"] is None
        await ws.send(_png())
        assert np.abs(await _frame(ws) - plain).mean() < 0.5


def test_bench_lora_video_writes_json(tmp_path, capsys):
    from livecast.services.bench import lora as bench

    path = tmp_path / "lora.json"
    assert bench.main(["--video", "--streams", "2", "--rank", "2", "--frames", "1", "--rounds", "1",
                       "--unet-calls", "1", "--resolution", "64", "--dtype", "float32",
                       "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert result["bench"] == "lora (video)" and result["video"]["streams"] == 2
    assert set(result["video"]["results"]) == {"no LoRA", "2 LoRAs, batched", "2 LoRAs, gather", "2 LoRAs, grouped"}
    assert all(r["fps_per_stream_best"] > 0 for r in result["video"]["results"].values())
    out = capsys.readouterr().out
    assert "2 LoRAs, batched" in out and "of its fps without one" in out
