"""Prompt-to-frame over HTTP in OpenAI's images shape: POST /v1/images/generations (txt2img) and
POST /v1/images/edits (multipart image + prompt → img2img).

Every image is a fresh batcher stream submitted at once, so the images of one request and of
concurrent requests share the batcher's UNet calls. Responses are `{"created", "data":
[{"b64_json", "revised_prompt"}]}`; `response_format` must be `b64_json` (nothing is hosted).
`lora` / `lora_scale` (both endpoints) apply a style LoRA the server was started with
(`--diffusion-loras`); an unknown name is a 400 with param `lora`. Edits take `controlnet_scale`
for the ControlNet the server was started with (`--diffusion-controlnet`; default 1 when there is
one, on the input's canny edges); a positive value without one is a 400 with param `controlnet_scale`.
"""
from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
from typing import Any

import PIL.Image
import PIL.ImageOps
from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import ConfigDict, Field

from livecast.services.deps import get_shell
from livecast.services.request_base import EdgeModel
from livecast.services.errors import APIError, overloaded
from livecast.services.media.deps import get_media, settings_error
from livecast.services.media.imageio import decode_image, encode_image, image_format
from livecast.services.media.service import MediaService, ServiceBusy
from livecast.services.core import Shell

router = APIRouter()

MAX_N = 8
MAX_SIDE = 1024
DEFAULT_STEPS = 4
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class ImageGenerationRequest(EdgeModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields we have no use for (quality, style, user)

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    size: str | None = None
    seed: int | None = Field(None, ge=0, lt=2**62)
    response_format: str = "b64_json"
    output_format: str = "png"
    negative_prompt: str = Field("", max_length=4000)
    guidance_scale: float | None = None
    num_inference_steps: int = Field(DEFAULT_STEPS, ge=1, le=50)
    lora: str | None = Field(None, max_length=64)  # a style LoRA named by --diffusion-loras
    lora_scale: float | None = None


@router.post("/v1/images/generations")
async def create_image(body: ImageGenerationRequest, service: MediaService = Depends(get_media),
                       shell: Shell = Depends(get_shell)):
    fmt = _check_formats(body.response_format, body.output_format)
    width, height = _parse_size(body.size, service)
    settings = _settings(body.prompt, body.negative_prompt, body.guidance_scale, body.num_inference_steps,
                         width, height, body.lora, body.lora_scale)
    settings["strength"] = 1.0  # txt2img denoises from pure noise: every step runs, whatever the count
    jobs = [({**settings, "seed": seed}, None) for seed in _seeds(body.seed, body.n)]
    return await _respond(service, jobs, body.prompt, fmt, shell.retry_after_s)


@router.post("/v1/images/edits")
async def edit_image(image: UploadFile = File(...), prompt: str = Form(..., min_length=1, max_length=4000),
                     n: int = Form(1, ge=1, le=MAX_N), size: str | None = Form(None),
                     seed: int | None = Form(None, ge=0, lt=2**62), strength: float = Form(0.5, gt=0, le=1),
                     response_format: str = Form("b64_json"), output_format: str = Form("png"),
                     negative_prompt: str = Form("", max_length=4000), guidance_scale: float | None = Form(None),
                     num_inference_steps: int = Form(DEFAULT_STEPS, ge=1, le=50), mask: UploadFile | None = File(None),
                     model: str | None = Form(None), lora: str | None = Form(None, max_length=64),
                     lora_scale: float | None = Form(None), controlnet_scale: float | None = Form(None),
                     service: MediaService = Depends(get_media), shell: Shell = Depends(get_shell)):
    if mask is not None:
        raise APIError(400, "mask is not supported: the whole image is edited", param="mask")
    fmt = _check_formats(response_format, output_format)
    target = _parse_size(size, service) if size is not None else None
    data = await image.read()
    try:
        picture = await asyncio.to_thread(_load_input, data, target)
    except ValueError as exc:
        raise APIError(400, str(exc), param="image", code="invalid_image") from exc
    # without `size` the output keeps the input's size; the model works at its own resolution
    width, height = target or (None, None)
    settings = _settings(prompt, negative_prompt, guidance_scale, num_inference_steps, width, height,
                         lora, lora_scale)
    settings["strength"] = strength
    if controlnet_scale is not None:  # the ControlNet (--diffusion-controlnet) on the image's edges
        settings["controlnet_scale"] = controlnet_scale
    jobs = [({**settings, "seed": s}, picture) for s in _seeds(seed, n)]
    return await _respond(service, jobs, prompt, fmt, shell.retry_after_s)


def _load_input(data: bytes, size: tuple[int, int] | None) -> PIL.Image.Image:
    picture = decode_image(data, fit=None if size else (MAX_SIDE, MAX_SIDE))
    return PIL.ImageOps.fit(picture, size, PIL.Image.Resampling.BILINEAR) if size else picture


async def _respond(service: MediaService, jobs: list, prompt: str, fmt: str,
                   retry_after_s: int) -> dict[str, Any]:
    try:
        images = await service.generate(jobs)
    except ServiceBusy as exc:
        raise overloaded(str(exc), retry_after_s) from exc
    except ValueError as exc:
        raise settings_error(exc) from exc
    encoded = await asyncio.to_thread(lambda: [encode_image(im, fmt) for im in images])
    return {"created": int(time.time()), "output_format": fmt.lower(),
            "data": [{"b64_json": base64.b64encode(e).decode(), "revised_prompt": prompt} for e in encoded]}


def _settings(prompt: str, negative_prompt: str, guidance_scale: float | None, steps: int,
              width: int | None, height: int | None, lora: str | None = None,
              lora_scale: float | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative_prompt, "num_inference_steps": steps,
                                "width": width, "height": height}
    for name, value in (("guidance_scale", guidance_scale), ("lora", lora), ("lora_scale", lora_scale)):
        if value is not None:
            settings[name] = value
    return settings


def _check_formats(response_format: str, output_format: str) -> str:
    if response_format != "b64_json":
        raise APIError(400, f"response_format must be b64_json (this server hosts no image URLs), "
                            f"got {response_format!r}", param="response_format")
    try:
        return image_format(output_format)
    except ValueError as exc:
        raise APIError(400, f"output_format {exc}", param="output_format") from exc


def _parse_size(size: str | None, service: MediaService) -> tuple[int, int]:
    default = tuple(service.model_info["resolution"])
    if size is None or size == "auto":
        return default
    step = service.size_multiple
    match = _SIZE.match(size)
    if match is None:
        raise APIError(400, f"size must look like '{default[0]}x{default[1]}' (WIDTHxHEIGHT), got {size!r}",
                       param="size")
    width, height = int(match[1]), int(match[2])
    if not (step <= width <= MAX_SIDE and step <= height <= MAX_SIDE) or width % step or height % step:
        raise APIError(400, f"size {size!r} is not supported: width and height must be multiples of {step} "
                            f"between {step} and {MAX_SIDE}", param="size")
    return width, height


def _seeds(seed: int | None, n: int) -> list[int]:
    first = secrets.randbelow(2**31) if seed is None else seed
    return [first + i for i in range(n)]
