"""POST /v1/images/generations and /v1/images/edits: OpenAI's shape, batching, errors."""
from __future__ import annotations

import asyncio
import base64
import io
import threading

import httpx
import numpy as np
import PIL.Image

from tests.media.rtc_client import MovingPattern


def _decode(item: dict) -> PIL.Image.Image:
    return PIL.Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


def _pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_generations_shape_seeds_and_sizes(http):
    response = http.post("/v1/images/generations", json={"prompt": "a lighthouse", "n": 2, "seed": 5,
                                                         "size": "192x128", "quality": "hd"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int) and len(body["data"]) == 2
    first, second = (_decode(item) for item in body["data"])
    assert first.format == "PNG" and first.size == second.size == (192, 128)
    assert body["data"][0]["revised_prompt"] == "a lighthouse"
    assert np.abs(_pixels(first) - _pixels(second)).mean() > 1  # seeds 5 and 6
    again = http.post("/v1/images/generations", json={"prompt": "a lighthouse", "seed": 5, "size": "192x128"})
    # same seed, same image (up to batched float rounding: it ran in a batch of 2 before)
    assert np.abs(_pixels(_decode(again.json()["data"][0])) - _pixels(first)).mean() < 0.5
    jpeg = http.post("/v1/images/generations", json={"prompt": "x", "output_format": "jpeg"}).json()
    assert _decode(jpeg["data"][0]).format == "JPEG" and _decode(jpeg["data"][0]).size == (128, 128)


def test_concurrent_requests_share_unet_calls(media_server):
    """Six requests in flight at once: those that wait while a call runs share the next one."""
    service = media_server.diffusion
    pipe = service.pipe
    batch_sizes: list[int] = []
    original = pipe.run
    gate = threading.Event()

    def recording_run(items, **kwargs):
        batch_sizes.append(len(items))
        if len(batch_sizes) == 1:  # hold the first call until the other requests are all waiting
            gate.wait(20)
        return original(items, **kwargs)

    async def burst():
        async with httpx.AsyncClient(base_url=media_server.url, timeout=60) as client:
            async def one(seed):
                return await client.post("/v1/images/generations", json={"prompt": "sky", "seed": seed})
            tasks = [asyncio.create_task(one(seed)) for seed in range(6)]
            for _ in range(2000):
                if batch_sizes and batch_sizes[0] + service.batcher.num_pending() == 6:
                    break
                await asyncio.sleep(0.01)
            gate.set()
            return await asyncio.gather(*tasks)

    pipe.run = recording_run
    try:
        responses = asyncio.run(burst())
    finally:
        pipe.run = original
    assert all(r.status_code == 200 for r in responses)
    images = [_pixels(_decode(r.json()["data"][0])) for r in responses]
    # whatever the first call caught, everything that waited meanwhile went in the second
    assert len(batch_sizes) <= 2 and sum(batch_sizes) == 6, batch_sizes
    assert min(np.abs(images[i] - images[j]).mean() for i in range(6) for j in range(i)) > 0.5


def test_edits_img2img(http):
    source = MovingPattern(width=160, height=120).image(10)
    response = http.post("/v1/images/edits", files={"image": ("in.png", _png(source), "image/png")},
                         data={"prompt": "watercolor", "strength": "1.0", "seed": "2"})
    assert response.status_code == 200, response.text
    out = _decode(response.json()["data"][0])
    assert out.size == (160, 120)  # no size: the input's own
    assert np.abs(_pixels(out) - source.astype(np.float32)).mean() > 15
    sized = http.post("/v1/images/edits", files={"image": ("in.png", _png(source), "image/png")},
                      data={"prompt": "watercolor", "size": "128x128", "n": "2", "output_format": "webp"})
    assert sized.status_code == 200, sized.text
    assert [_decode(d).size for d in sized.json()["data"]] == [(128, 128)] * 2


def _error(response, status=400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def test_bad_requests_are_openai_shaped_400s(media_server, http):
    cases = [({"n": 1}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "x", "size": "big"}, "size"),
             ({"prompt": "x", "size": "100x100"}, "size"), ({"prompt": "x", "size": "4096x4096"}, "size"),
             ({"prompt": "x", "n": 0}, "n"), ({"prompt": "x", "n": 99}, "n"),
             ({"prompt": "x", "response_format": "url"}, "response_format"),
             ({"prompt": "x", "output_format": "gif"}, "output_format"),
             ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"), ({"prompt": "x", "seed": -1}, "seed")]
    for body, param in cases:
        assert _error(http.post("/v1/images/generations", json=body))["param"] == param, body
    assert _error(http.post("/v1/images/generations", content=b"{", headers={"content-type": "application/json"}))

    png = _png(np.zeros((64, 64, 3), np.uint8))
    edits = [({"image": ("x.png", b"not an image", "image/png")}, {"prompt": "x"}, "image"),
             ({"image": ("x.png", png[:40], "image/png")}, {"prompt": "x"}, "image"),
             ({"image": ("x.png", b"", "image/png")}, {"prompt": "x"}, "image"),
             ({}, {"prompt": "x"}, "image"),
             ({"image": ("x.png", png, "image/png")}, {}, "prompt"),
             ({"image": ("x.png", png, "image/png")}, {"prompt": "x", "strength": "2"}, "strength"),
             ({"image": ("x.png", png, "image/png")}, {"prompt": "x", "size": "7x7"}, "size"),
             ({"image": ("x.png", png, "image/png"), "mask": ("m.png", png, "image/png")}, {"prompt": "x"}, "mask")]
    for files, data, param in edits:
        error = _error(http.post("/v1/images/edits", files=files or {"unused": ("u", b"", "text/plain")}, data=data))
        assert error["param"] == param, (param, error)
    assert not media_server.diffusion.batcher.stream_ids()  # failed requests leave no stream behind
