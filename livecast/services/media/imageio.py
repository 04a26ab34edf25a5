"""Encoded images in and out of the media routes: bounded, validated decoding and encoding.

Both run in worker threads (callers use `asyncio.to_thread`): decoding a camera JPEG is a few
milliseconds of CPU that the event loop must not spend.
"""
from __future__ import annotations

import io
import warnings

import PIL.Image
import PIL.ImageOps

MAX_INPUT_SIDE = 4096
MAX_INPUT_PIXELS = 4096 * 4096
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG", "webp": "WEBP"}
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


def decode_image(data: bytes, fit: tuple[int, int] | None = None) -> PIL.Image.Image:
    """RGB image from PNG/JPEG/WebP/... bytes, scaled down to fit `fit` (aspect kept) if given.

    Raises ValueError for empty, undecodable, truncated or oversized data.
    """
    if not data:
        raise ValueError("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
            width, height = image.size
            if width > MAX_INPUT_SIDE or height > MAX_INPUT_SIDE or width * height > MAX_INPUT_PIXELS:
                raise ValueError(f"the image is {width}x{height}; the limit is {MAX_INPUT_SIDE} pixels a side")
            if fit is not None and image.format == "JPEG":
                image.draft("RGB", fit)  # DCT-domain downscale: decodes 2-8x less
            image = PIL.ImageOps.exif_transpose(image)
            image = image.convert("RGB")
    except ValueError:
        raise
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as exc:
        raise ValueError(f"could not decode the image: {exc}") from exc
    if fit is not None and (image.width > fit[0] or image.height > fit[1]):
        image.thumbnail(fit, PIL.Image.Resampling.BILINEAR)
    return image


def image_format(name: str) -> str:
    """PIL format name for `png`, `jpeg`/`jpg` or `webp`; ValueError otherwise."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ValueError(f"format must be one of png, jpeg, webp; got {name!r}") from None


def encode_image(image: PIL.Image.Image, fmt: str = "JPEG", quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt in ("JPEG", "WEBP") else {"compress_level": 1}
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
