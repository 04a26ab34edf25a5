"""Frames in and out: validation, conversion to model tensors, fitting to the working size.

A frame of any size is scaled to fit the working size with its aspect ratio kept, padded by edge
replication to the exact size, and after generation cropped and scaled back: the output always
has the input's size and the model never sees stretched content.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

Frame = Union[PIL.Image.Image, np.ndarray, torch.Tensor]
Box = tuple[int, int, int, int]  # left, top, width, height of the content inside the padded frame

MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096


def frame_size(frame: Frame) -> tuple[int, int]:
    """(width, height) of a frame, after checking its type, layout and size (no pixel work)."""
    if isinstance(frame, PIL.Image.Image):
        width, height = frame.size
    elif isinstance(frame, (np.ndarray, torch.Tensor)):
        height, width = _array_hw(frame)
        dtype = frame.dtype
        if isinstance(frame, np.ndarray):
            ok = dtype in (np.uint8, np.bool_) or np.issubdtype(dtype, np.floating)
        else:
            ok = dtype in (torch.uint8, torch.bool) or dtype.is_floating_point
        if not ok:
            raise ValueError(f"frame dtype {dtype} is not supported; use uint8 or float in [0, 1]")
    else:
        raise ValueError(f"frame must be a PIL image, numpy array or torch tensor, "
                         f"got {type(frame).__name__}")
    if width <= 0 or height <= 0:
        raise ValueError(f"frame is empty ({width}x{height} pixels)")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ValueError(f"frame is too large ({width}x{height} pixels); the limit is {MAX_SIDE} "
                         f"pixels per side and {MAX_PIXELS / 1e6:.1f} megapixels")
    return width, height


def _array_hw(array: np.ndarray | torch.Tensor) -> tuple[int, int]:
    shape = tuple(array.shape)
    if isinstance(array, np.ndarray):  # numpy images are (H, W) or (H, W, C)
        ok = len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4))
        hw = shape[:2]
    else:  # torch images are (H, W), (C, H, W) or (1, C, H, W)
        if len(shape) == 4 and shape[0] == 1:
            shape = shape[1:]
        ok = len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3, 4))
        hw = shape[-2:]
    if not ok:
        layout = "(H, W[, C])" if isinstance(array, np.ndarray) else "([1, ]C, H, W)"
        raise ValueError(f"frame array has shape {tuple(array.shape)}; expected {layout} "
                         f"with 1, 3 or 4 channels")
    return int(hw[0]), int(hw[1])


def frame_to_tensor(frame: Frame, device: torch.device) -> torch.Tensor:
    """(3, H, W) float32 RGB in [0, 1] on `device`; grayscale is replicated, alpha dropped."""
    frame_size(frame)
    if isinstance(frame, PIL.Image.Image):
        if frame.mode != "RGB":
            frame = frame.convert("RGB")
        frame = np.asarray(frame)
    if isinstance(frame, np.ndarray):
        # torch wants writable memory; PIL's arrays are read-only views, so copy only those.
        frame = torch.from_numpy(np.ascontiguousarray(frame) if frame.flags.writeable else np.array(frame))
        frame = frame.unsqueeze(-1) if frame.ndim == 2 else frame
        frame = frame.permute(2, 0, 1)
    frame = frame.squeeze(0) if frame.ndim == 4 else frame
    frame = frame.unsqueeze(0) if frame.ndim == 2 else frame
    if frame.dtype == torch.uint8:
        image = frame.to(device).float() / 255.0
    elif frame.dtype == torch.bool:
        image = frame.to(device).float()
    else:
        image = frame.to(device).float()
        if not torch.isfinite(image).all():
            raise ValueError("frame contains NaN or infinite values")
        image = image.clamp(0.0, 1.0)  # float frames are [0, 1] by convention
    channels = image.shape[0]
    if channels == 1:
        image = image.expand(3, -1, -1)
    elif channels == 4:
        image = image[:3]
    return image  # (3, H, W)


def fit(image: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, Box]:
    """Scale (3, H, W) [0, 1] to fit (width, height), pad to it; (1, 3, height, width) in [-1, 1]."""
    src_h, src_w = image.shape[-2:]
    if (src_w, src_h) == (width, height):
        return image.unsqueeze(0) * 2.0 - 1.0, (0, 0, width, height)
    scale = min(width / src_w, height / src_h)
    new_w, new_h = max(1, round(src_w * scale)), max(1, round(src_h * scale))
    resized = _resize(image.unsqueeze(0), new_w, new_h)
    left, top = (width - new_w) // 2, (height - new_h) // 2
    pad = (left, width - new_w - left, top, height - new_h - top)
    padded = F.pad(resized, pad, mode="replicate") if any(pad) else resized
    return padded * 2.0 - 1.0, (left, top, new_w, new_h)


def to_pil(image: torch.Tensor, box: Box, size: tuple[int, int]) -> PIL.Image.Image:
    """(3, h, w) in [-1, 1] -> PIL RGB of `size`, taking only the content `box`."""
    left, top, box_w, box_h = box
    image = image[:, top:top + box_h, left:left + box_w]
    if (box_w, box_h) != size:
        image = _resize(image.unsqueeze(0), *size)[0]
    # Same quantization as diffusers' VaeImageProcessor.postprocess.
    pixels = ((image / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return PIL.Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


def _resize(batch: torch.Tensor, width: int, height: int) -> torch.Tensor:
    antialias = width < batch.shape[-1] or height < batch.shape[-2]
    return F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False,
                         antialias=antialias)
