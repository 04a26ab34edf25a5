"""Classical stylization filters, one per style prompt: the targets the demo UNet learns.

Each filter maps an (H, W, 3) float32 image in [0, 1] to a stylized one of the same size,
deterministically (no randomness beyond the image itself). Sizes are in latent cells (8 pixels,
the VAE's downscale), so a model trained at 128 px shows the same strokes at 256 px.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

CELL = 8  # pixels per latent cell


def luminance(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def saturate(image: np.ndarray, amount: float) -> np.ndarray:
    grey = luminance(image)[..., None]
    return np.clip(grey + amount * (image - grey), 0, 1)


def kuwahara(image: np.ndarray, radius: int) -> np.ndarray:
    """Each pixel takes the mean of the least-varied of its four (radius+1)^2 quadrants."""
    k = radius + 1
    mean = ndimage.uniform_filter(image, (k, k, 1))
    var = ndimage.uniform_filter(luminance(image) ** 2, k) - luminance(mean) ** 2
    h, w = image.shape[:2]
    best_mean = np.zeros_like(image)
    best_var = np.full((h, w), np.inf, np.float32)
    offsets = [(-(k // 2), -(k // 2)), (-(k // 2), k // 2), (k // 2, -(k // 2)), (k // 2, k // 2)]
    for oy, ox in offsets:
        m = np.roll(mean, (oy, ox), (0, 1))
        v = np.roll(var, (oy, ox), (0, 1))
        better = v < best_var
        best_var = np.where(better, v, best_var)
        best_mean = np.where(better[..., None], m, best_mean)
    return best_mean


def oil_painting(image: np.ndarray) -> np.ndarray:
    """Kuwahara brush strokes, a reduced warm palette, richer colour and a canvas weave."""
    out = kuwahara(kuwahara(image, CELL // 2), CELL // 2)
    out = np.round(saturate(out, 1.4) * 7) / 7  # palette of 8 levels per channel
    out = ndimage.gaussian_filter(out, (0.7, 0.7, 0))
    h, w = image.shape[:2]
    y, x = np.mgrid[0:h, 0:w]
    weave = 0.04 * (np.sin(x * 1.9) * np.sin(y * 1.9))[..., None]
    return np.clip(out * np.array([1.05, 1.0, 0.9], np.float32) + weave, 0, 1)


def pencil_sketch(image: np.ndarray) -> np.ndarray:
    """Colour-dodge of the grey image by its blurred negative: dark lines on paper."""
    grey = luminance(image)
    blurred = ndimage.gaussian_filter(1 - grey, CELL / 3)
    dodge = np.clip(grey / np.maximum(1 - blurred, 1e-3), 0, 1)
    edges = np.hypot(ndimage.sobel(ndimage.gaussian_filter(grey, 1.0), 0),
                     ndimage.sobel(ndimage.gaussian_filter(grey, 1.0), 1))
    sketch = np.clip(dodge - 1.5 * edges, 0, 1) ** 1.5
    h, w = grey.shape
    y, x = np.mgrid[0:h, 0:w]
    hatch = 0.06 * (np.sin((x + y) * 1.2) > 0.6) * (grey < 0.45)  # cross-hatching in shadows
    paper = np.array([0.97, 0.95, 0.9], np.float32)
    return np.clip((sketch - hatch)[..., None] * paper, 0, 1)


def pop_art(image: np.ndarray) -> np.ndarray:
    """Four flat poster colours by brightness, black outlines and halftone dots."""
    grey = ndimage.gaussian_filter(luminance(image), 1.0)
    palette = np.array([[0.1, 0.05, 0.3], [0.95, 0.1, 0.45], [0.1, 0.75, 0.95], [1.0, 0.92, 0.1]],
                       np.float32)
    levels = np.clip((grey * 4).astype(int), 0, 3)
    out = palette[levels]
    h, w = grey.shape
    y, x = np.mgrid[0:h, 0:w]
    period = CELL * 1.5
    dots = (((x % period) - period / 2) ** 2 + ((y % period) - period / 2) ** 2) < (period * 0.28) ** 2
    out = np.where((dots & (levels >= 2))[..., None], out * 0.75, out)
    edges = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)) > 0.35
    edges = ndimage.binary_dilation(edges)
    return np.where(edges[..., None], 0.05, out).astype(np.float32)


def _voronoi_labels(h: int, w: int, tile: float) -> np.ndarray:
    """Tile ids of a jittered grid (a fixed seed: the same tiling for every image of a size)."""
    rng = np.random.default_rng(1234)
    ny, nx = int(np.ceil(h / tile)) + 1, int(np.ceil(w / tile)) + 1
    gy, gx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    sites = np.stack([(gy + rng.uniform(0.1, 0.9, gy.shape)) * tile,
                      (gx + rng.uniform(0.1, 0.9, gx.shape)) * tile], -1).reshape(-1, 2)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    # Nearest site among the 3x3 grid neighbours of each pixel's own cell.
    cy, cx = (y // tile).astype(int), (x // tile).astype(int)
    best = np.full((h, w), np.inf, np.float32)
    labels = np.zeros((h, w), np.int64)
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            iy, ix = np.clip(cy + oy, 0, ny - 1), np.clip(cx + ox, 0, nx - 1)
            idx = iy * nx + ix
            d = (sites[idx, 0] - y) ** 2 + (sites[idx, 1] - x) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            labels = np.where(closer, idx, labels)
    return labels


def mosaic(image: np.ndarray) -> np.ndarray:
    """Voronoi tiles, each the average colour under it, with dark grout between them."""
    h, w = image.shape[:2]
    labels = _voronoi_labels(h, w, CELL * 2.0)
    count = np.bincount(labels.ravel(), minlength=labels.max() + 1).astype(np.float32)
    out = np.empty_like(image)
    for c in range(3):
        total = np.bincount(labels.ravel(), image[..., c].ravel(), minlength=count.size)
        out[..., c] = (total / np.maximum(count, 1))[labels]
    out = saturate(out, 1.25)
    grout = (ndimage.grey_dilation(labels, 3) != ndimage.grey_erosion(labels, 3))
    return np.where(grout[..., None], np.float32(0.12), out).astype(np.float32)


def watercolor(image: np.ndarray) -> np.ndarray:
    """Soft washes: blurred, lightened, desaturated colour with pigment pooling at edges."""
    wash = ndimage.gaussian_filter(kuwahara(image, CELL // 4), (CELL / 3, CELL / 3, 0))
    wash = saturate(wash, 0.8)
    wash = 1 - 0.75 * (1 - wash)  # thin pigment on white paper
    grey = luminance(wash)
    pooled = ndimage.gaussian_filter(grey, 1.0) - ndimage.gaussian_filter(grey, 3.0)
    out = wash * (1 + 2.0 * np.clip(pooled, -0.2, 0.05))[..., None]
    h, w = grey.shape
    y, x = np.mgrid[0:h, 0:w]
    paper = 0.02 * np.sin(x * 0.7 + np.sin(y * 0.3) * 2)[..., None]
    return np.clip(out + paper, 0, 1).astype(np.float32)


def neon_edges(image: np.ndarray) -> np.ndarray:
    """Glowing edges in the image's own (saturated) colours on black."""
    smooth = ndimage.gaussian_filter(image, (1.2, 1.2, 0))
    grey = luminance(smooth)
    edges = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))
    edges = np.clip(edges / (np.percentile(edges, 98) + 1e-3), 0, 1)
    colour = saturate(smooth, 2.5)
    colour = colour / (colour.max(-1, keepdims=True) + 1e-3)
    lines = edges[..., None] * colour
    glow = ndimage.gaussian_filter(lines, (CELL / 3, CELL / 3, 0)) * 2.5
    return np.clip(lines * 1.3 + glow + 0.02, 0, 1).astype(np.float32)


def identity(image: np.ndarray) -> np.ndarray:
    return image


# Style name (its canonical prompt) -> filter. "photo" keeps the picture as it is: the empty
# prompt and prompts that name no style map to it.
STYLES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "photo": identity,
    "oil painting": oil_painting,
    "pencil sketch": pencil_sketch,
    "pop art": pop_art,
    "mosaic": mosaic,
    "watercolor": watercolor,
    "neon edges": neon_edges,
}

SUBJECTS = ("a cat", "a dog", "a red fox in the snow", "a city street", "mountains", "a portrait",
            "a flower", "a car", "the ocean", "a forest", "a robot", "a face", "a castle",
            "a bowl of fruit", "a person at a desk", "a bird", "a house", "a sunset", "a lighthouse at dusk")
STYLE_TEMPLATES = ("{style}", "{style} of {subject}", "{subject}, {style}", "{subject} in {style} style",
                   "{style} style", "a {style}", "{style}, highly detailed", "{style}, vivid colors")
PLAIN_TEMPLATES = ("", "photo", "a photo of {subject}", "{subject}", "{subject}, cinematic")


def prompts_for(style: str) -> list[str]:
    """Every training prompt of `style` (style names appear verbatim in each)."""
    templates = PLAIN_TEMPLATES if style == "photo" else STYLE_TEMPLATES
    out = []
    for template in templates:
        for subject in SUBJECTS if "{subject}" in template else ("",):
            out.append(template.format(style=style, subject=subject))
    return sorted(set(out))
