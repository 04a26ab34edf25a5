"""Scores for a stylizing model: does the output keep the input's structure, and do styles differ?

- `edge_correlation(a, b)`: Pearson correlation of the two pictures' edge maps (gradient
  magnitude of the luminance, after a blur of about one latent cell, where the demo's structure
  lives). Stylization recolours and re-textures but keeps edges where they were; an output
  unrelated to the input scores about 0.
- `ssim(a, b)`: the luminance SSIM of Wang et al. (2004), Gaussian window sigma 1.5.
- `evaluate(pipe, frames)`: both scores for every style prompt, how far styles are apart and
  whether each output is nearest to its own filter's target.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from . import styles


def _grey(image: Any) -> np.ndarray:
    array = np.asarray(image, np.float32)
    if array.max() > 1.5:
        array = array / 255
    return styles.luminance(array[..., :3])


def edge_map(image: Any, sigma: float = 4.0) -> np.ndarray:
    grey = ndimage.gaussian_filter(_grey(image), sigma)
    return np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1))


def edge_correlation(a: Any, b: Any, sigma: float = 4.0) -> float:
    ea, eb = edge_map(a, sigma).ravel(), edge_map(b, sigma).ravel()
    return float(np.corrcoef(ea, eb)[0, 1])


def ssim(a: Any, b: Any) -> float:
    x, y = _grey(a).astype(np.float64), _grey(b).astype(np.float64)
    blur = lambda v: ndimage.gaussian_filter(v, 1.5)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def evaluate(pipe, frames: dict[str, np.ndarray], **settings: Any) -> dict[str, Any]:
    """Stylize each (H, W, 3) float frame with every style prompt (one fresh stream each).

    Returns per frame and style: edge correlation and SSIM with the input, the distance to each
    style's filter target (mean absolute difference in [0, 1] units, blurred like the edges),
    and per frame the smallest mean absolute difference between two styles' outputs.
    """
    from .scenes import to_uint8

    report: dict[str, Any] = {}
    for name, image in frames.items():
        outputs = {}
        for style in styles.STYLES:
            pipe.prepare(style if style != "photo" else "", **settings)
            outputs[style] = np.asarray(pipe(to_uint8(image)), np.float32) / 255
        targets = {s: f(image) for s, f in styles.STYLES.items()}
        soft = lambda v: ndimage.gaussian_filter(v, (4, 4, 0))  # noqa: E731
        rows = {}
        for style, out in outputs.items():
            dist = {s: float(np.abs(soft(out) - soft(t)).mean()) for s, t in targets.items()}
            rows[style] = {"edge_corr": edge_correlation(image, out), "ssim": ssim(image, out),
                           "nearest_target": min(dist, key=dist.get), "target_dist": dist[style]}
        names = list(outputs)
        apart = min(float(np.abs(outputs[a] - outputs[b]).mean())
                    for i, a in enumerate(names) for b in names[i + 1:])
        report[name] = {"styles": rows, "min_style_gap": apart}
    return report
