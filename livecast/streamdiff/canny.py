"""Canny edge maps in torch, batched: the conditioning image of a canny ControlNet.

It follows OpenCV's `cv2.Canny(image, low, high)` (what diffusers' ControlNet docs feed their
pipelines): a 3x3 Sobel with reflected borders, the L1 gradient magnitude |dx| + |dy| taken from
the channel where it is largest (cv2's rule for colour images), non-maximum suppression along
the gradient direction quantised to 0/45/90/135 degrees, then a double threshold: pixels above
`high` are edges, pixels above `low` are edges when 8-connected to one (hysteresis, grown one
pixel per dilation step). Thresholds are on the 0-255 pixel scale.

No weights: plain tensor ops, on whatever device the frames are (the CPU for a CPU pipeline).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_HYSTERESIS_STEPS = 64  # pixels an edge may grow from its strong end; cv2 has no bound
_TAN_22_5 = math.tan(math.radians(22.5))
_TAN_67_5 = math.tan(math.radians(67.5))


def canny(images: torch.Tensor, low: float | torch.Tensor, high: float | torch.Tensor) -> torch.Tensor:
    """Edge maps (N, 1, H, W) of 0.0/1.0 for images (N, C, H, W) on the 0-255 scale.

    `low` and `high` are numbers or (N,) tensors (each frame its own thresholds).
    """
    if images.ndim != 4:
        raise ValueError(f"canny takes (N, C, H, W) images, got shape {tuple(images.shape)}")
    n, h, w = images.shape[0], *images.shape[-2:]
    # 1. Sobel gradients, separable (a difference one way, [1, 2, 1] the other), on reflected
    # borders (cv2's BORDER_REFLECT_101)
    padded = F.pad(images.float(), (1, 1, 1, 1), mode="reflect" if min(h, w) > 1 else "replicate")
    diff = padded[..., 2:] - padded[..., :-2]  # (N, C, H + 2, W)
    dx = diff[..., :-2, :] + 2 * diff[..., 1:-1, :] + diff[..., 2:, :]
    diff = padded[..., 2:, :] - padded[..., :-2, :]  # (N, C, H, W + 2)
    dy = diff[..., :-2] + 2 * diff[..., 1:-1] + diff[..., 2:]
    # 2. the channel with the largest L1 magnitude gives each pixel its gradient
    magnitude = dx.abs() + dy.abs()
    magnitude, channel = magnitude.max(dim=1, keepdim=True)  # (N, 1, H, W)
    dx, dy = dx.gather(1, channel), dy.gather(1, channel)
    # 3. non-maximum suppression: strictly above the neighbour behind, at least the one ahead
    local_max = _local_maxima(magnitude, dx, dy)
    low, high = _per_frame(low, n, images.device), _per_frame(high, n, images.device)
    weak = local_max & (magnitude > low)
    edges = weak & (magnitude > high)
    # 4. hysteresis: weak pixels join when 8-connected to an edge, one pixel per step
    for _ in range(MAX_HYSTERESIS_STEPS):
        grown = weak & (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()


def canny_control_image(frames: torch.Tensor, low: float | torch.Tensor,
                        high: float | torch.Tensor) -> torch.Tensor:
    """A ControlNet conditioning image (N, 3, H, W) in [0, 1] from frames (N, 3, H, W) in [-1, 1]:
    the frames on 8-bit levels (as cv2 sees them), their canny edges white on black, in RGB."""
    levels = ((frames + 1) * 127.5).round().clamp(0, 255)
    return canny(levels, low, high).expand(-1, 3, -1, -1)


def _per_frame(value: float | torch.Tensor, n: int, device: torch.device) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32).reshape(n, 1, 1, 1)
    return float(value)


def _local_maxima(magnitude: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    h, w = magnitude.shape[-2:]
    ring = F.pad(magnitude, (1, 1, 1, 1))  # zero outside the image, as in cv2's buffers

    def at(row: int, col: int) -> torch.Tensor:  # the neighbour at offset (row, col)
        return ring[..., 1 + row:1 + row + h, 1 + col:1 + col + w]

    ax, ay = dx.abs(), dy.abs()
    horizontal = ay < ax * _TAN_22_5
    vertical = ay > ax * _TAN_67_5
    # Diagonals: dx and dy of one sign run along the main diagonal, else along the anti-diagonal.
    same_sign = (dx >= 0) == (dy >= 0)
    m = magnitude
    along_x = (m > at(0, -1)) & (m >= at(0, 1))
    along_y = (m > at(-1, 0)) & (m >= at(1, 0))
    main_diagonal = (m > at(-1, -1)) & (m > at(1, 1))
    anti_diagonal = (m > at(-1, 1)) & (m > at(1, -1))
    diagonal = torch.where(same_sign, main_diagonal, anti_diagonal)
    return torch.where(horizontal, along_x, torch.where(vertical, along_y, diagonal))

