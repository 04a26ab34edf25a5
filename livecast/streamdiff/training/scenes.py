"""Procedural training scenes, made in code from a seed: nothing is downloaded or bundled.

Every scene is an (H, W, 3) float32 array in [0, 1]. `scene(rng, size)` draws one of several
kinds (flat shapes over gradients, lit spheres, a test card, stripes and rings, text, smooth
colour fields) and then, half the time, camera-like effects (vignette, blur, sensor noise), so the
model sees both crisp graphics and soft webcam-like frames. `noise_scene(noise, size)` turns a
latent-sized noise tensor into a smooth colour field: txt2img learns to stylize those, which is
how a seed becomes a picture.
"""
from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from scipy import ndimage

WORDS = ("LIVE", "CAST", "HELLO", "TEST", "ON AIR", "DEMO", "CAM 1", "STREAM", "A-Z", "0123")


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 0.95, 3).astype(np.float32)


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A linear or radial blend of two random colours."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    if rng.random() < 0.6:
        angle = rng.uniform(0, 2 * np.pi)
        s = np.cos(angle) * (x - 0.5) + np.sin(angle) * (y - 0.5) + 0.5
    else:
        cx, cy = rng.uniform(0.2, 0.8, 2)
        s = np.hypot(x - cx, y - cy) * rng.uniform(1.0, 2.0)
    s = np.clip(s, 0, 1)[..., None]
    return (1 - s) * _colour(rng) + s * _colour(rng)


def smooth_field(rng: np.random.Generator, size: int, cells: int = 5) -> np.ndarray:
    grid = rng.uniform(0, 1, (cells, cells, 3)).astype(np.float32)
    image = PIL.Image.fromarray((grid * 255).astype(np.uint8)).resize((size, size), PIL.Image.BICUBIC)
    return np.asarray(image, np.float32) / 255


def draw_shapes(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    size = image.shape[0]
    canvas = PIL.Image.fromarray((image * 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(canvas)
    for _ in range(count):
        fill = tuple(int(c * 255) for c in _colour(rng))
        x0, y0 = rng.uniform(-0.1, 0.9, 2) * size
        w, h = rng.uniform(0.12, 0.5, 2) * size
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=fill)
        elif kind == 1:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=fill)
        elif kind == 2:
            points = [tuple(p) for p in rng.uniform(-0.1, 1.1, (3, 2)) * size]
            draw.polygon(points, fill=fill)
        else:
            width = int(rng.integers(2, max(3, size // 16)))
            draw.line([tuple(rng.uniform(0, 1, 2) * size), tuple(rng.uniform(0, 1, 2) * size)],
                      fill=fill, width=width)
    return np.asarray(canvas, np.float32) / 255


def lit_sphere(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A Lambert-shaded sphere with a specular highlight, lit from a random direction."""
    size = image.shape[0]
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = rng.uniform(0.25, 0.75, 2) * size
    r = rng.uniform(0.15, 0.35) * size
    dx, dy = (x - cx) / r, (y - cy) / r
    inside = dx**2 + dy**2 < 1
    dz = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1))
    light = rng.normal(size=3)
    light[2] = abs(light[2]) + 0.5
    light /= np.linalg.norm(light)
    lambert = np.clip(dx * light[0] + dy * light[1] + dz * light[2], 0, 1)
    spec = lambert ** 30
    shade = (0.15 + 0.85 * lambert)[..., None] * _colour(rng) + 0.6 * spec[..., None]
    out = image.copy()
    out[inside] = np.clip(shade[inside], 0, 1)
    return out


def test_card(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour bars over a grey ramp with a circle: a webcam test card."""
    bars = np.array([[0.75] * 3, [0.75, 0.75, 0], [0, 0.75, 0.75], [0, 0.75, 0],
                     [0.75, 0, 0.75], [0.75, 0, 0], [0, 0, 0.75]], np.float32)
    x = np.arange(size) * len(bars) // size
    image = np.repeat(bars[x][None], size, 0)
    ramp_from = int(size * rng.uniform(0.6, 0.8))
    image[ramp_from:] = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    canvas = PIL.Image.fromarray((image * 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(canvas)
    c, r = size / 2 + rng.uniform(-0.1, 0.1) * size, size * rng.uniform(0.2, 0.35)
    draw.ellipse([c - r, size / 2 - r, c + r, size / 2 + r], outline=(255, 255, 255), width=max(2, size // 64))
    return np.asarray(canvas, np.float32) / 255


def stripes(rng: np.random.Generator, size: int, phase: float = 0.0) -> np.ndarray:
    """Stripes or rings of two colours: a moving pattern when `phase` advances."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = rng.uniform(0.08, 0.25)
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        s = np.cos(angle) * x + np.sin(angle) * y
    else:
        s = np.hypot(x - rng.uniform(0.3, 0.7), y - rng.uniform(0.3, 0.7))
    wave = (0.5 + 0.5 * np.sin(2 * np.pi * (s / period + phase)))[..., None]
    return (1 - wave) * _colour(rng) + wave * _colour(rng)


def draw_text(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    canvas = PIL.Image.fromarray((image * 255).astype(np.uint8))
    draw = PIL.ImageDraw.Draw(canvas)
    try:
        font = PIL.ImageFont.load_default(size=int(size * rng.uniform(0.12, 0.22)))
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        font = PIL.ImageFont.load_default()
    word = WORDS[rng.integers(len(WORDS))]
    xy = tuple(rng.uniform(0.02, 0.45, 2) * size)
    draw.text(xy, word, fill=tuple(int(c * 255) for c in _colour(rng)), font=font)
    return np.asarray(canvas, np.float32) / 255


def camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """What a webcam does to a scene: a little blur, vignetting, exposure and sensor noise."""
    size = image.shape[0]
    out = ndimage.gaussian_filter(image, (rng.uniform(0.3, 1.5),) * 2 + (0,))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    vignette = 1 - rng.uniform(0.1, 0.5) * ((x - 0.5) ** 2 + (y - 0.5) ** 2) * 2
    out = out * vignette[..., None] * rng.uniform(0.8, 1.15)
    out = out + rng.normal(0, rng.uniform(0.005, 0.03), out.shape)
    return np.clip(out, 0, 1).astype(np.float32)


def scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """One procedural scene; see the module docstring."""
    kind = rng.integers(0, 6)
    if kind == 0:
        image = draw_shapes(rng, gradient(rng, size), int(rng.integers(2, 7)))
    elif kind == 1:
        image = lit_sphere(rng, draw_shapes(rng, gradient(rng, size), int(rng.integers(0, 3))))
    elif kind == 2:
        image = test_card(rng, size)
    elif kind == 3:
        image = draw_shapes(rng, stripes(rng, size), int(rng.integers(1, 4)))
    elif kind == 4:
        image = draw_text(rng, draw_shapes(rng, smooth_field(rng, size), int(rng.integers(1, 4))))
    else:
        image = lit_sphere(rng, smooth_field(rng, size, int(rng.integers(2, 6))))
    if rng.random() < 0.5:
        image = camera(rng, image)
    return np.clip(image, 0, 1).astype(np.float32)


def person_frame(size: int = 256, shift: int = 0) -> np.ndarray:
    """A camera-like frame of someone at a desk (head, shoulders, window, lamp), never trained on:
    the held-out frame the tests stylize."""
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = (0.55 + 0.25 * y)[..., None] * np.array([0.85, 0.8, 0.7], np.float32)  # wall
    image[(x > 0.62) & (x < 0.92) & (y > 0.1) & (y < 0.5)] = (0.75, 0.85, 0.95)  # window
    image[(x > 0.765) & (x < 0.775) & (y > 0.1) & (y < 0.5)] = (0.3, 0.25, 0.2)
    cx = 0.4 + shift / size
    body = ((x - cx) / 0.3) ** 2 + ((y - 1.05) / 0.35) ** 2 < 1
    image[body] = (0.2, 0.3, 0.55)  # shirt
    head = ((x - cx) / 0.12) ** 2 + ((y - 0.45) / 0.16) ** 2 < 1
    shade = np.clip(0.75 + 0.8 * (cx - x), 0.4, 1.1)[..., None] * np.array([0.92, 0.72, 0.6], np.float32)
    image = np.where(head[..., None], shade, image)
    hair = head & (y < 0.36)
    image[hair] = (0.25, 0.15, 0.1)
    for ex in (-0.045, 0.045):  # eyes
        image[((x - cx - ex) ** 2 + (y - 0.44) ** 2) < 0.012**2] = (0.1, 0.1, 0.1)
    image[(y > 0.88) & (x < 0.2)] = (0.45, 0.3, 0.2)  # desk
    image = ndimage.gaussian_filter(image, (1.0, 1.0, 0))
    image = image + rng.normal(0, 0.015, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def noise_scene(noise: np.ndarray, size: int) -> np.ndarray:
    """(C, h, w) latent noise -> an (size, size, 3) smooth colour field that follows its low
    frequencies (the txt2img scene of that noise)."""
    low = ndimage.gaussian_filter(noise[:3].astype(np.float32), (0, 1.5, 1.5))
    low = low / (low.std(axis=(1, 2), keepdims=True) + 1e-6)
    field = 1 / (1 + np.exp(-1.6 * low))  # (3, h, w) in (0, 1)
    image = PIL.Image.fromarray((field.transpose(1, 2, 0) * 255).astype(np.uint8))
    return np.asarray(image.resize((size, size), PIL.Image.BICUBIC), np.float32) / 255


def to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
