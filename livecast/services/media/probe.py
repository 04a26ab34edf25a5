"""The latency probe's frame ids: 16 black/white square blocks across the top of a frame.

`livecast bench webrtc` draws ids this way in the browser (web/js/probe.js mirrors this module);
a server in `--latency-probe` mode reads each input frame's id and stamps it on the output, so
the page can match what it gets back to what it sent. Bits are 12 of id (mod 4096), MSB first,
then 4 check bits, so a frame the codec garbled decodes to None rather than to a wrong id.
"""
from __future__ import annotations

import numpy as np

NUM_BLOCKS = 16
ID_BITS = 12
MAX_ID = 1 << ID_BITS


def _check(frame_id: int) -> int:
    return (frame_id ^ (frame_id >> 4) ^ (frame_id >> 8) ^ 0b1010) & 0xF


def id_bits(frame_id: int) -> list[int]:
    frame_id %= MAX_ID
    word = (frame_id << 4) | _check(frame_id)
    return [(word >> (NUM_BLOCKS - 1 - i)) & 1 for i in range(NUM_BLOCKS)]


def read_id(rgb: np.ndarray) -> int | None:
    """The id in an (H, W, 3) uint8 frame, or None when there is none (or it fails its check)."""
    height, width = rgb.shape[:2]
    block = width // NUM_BLOCKS
    if block < 4 or height < block:
        return None
    lo, hi = block // 4, block - block // 4  # the block's centre: codecs blur the edges
    strip = rgb[lo:hi, : block * NUM_BLOCKS].astype(np.float32).mean(axis=(0, 2))  # (W',)
    means = strip.reshape(NUM_BLOCKS, block)[:, lo:hi].mean(axis=1)
    word = 0
    for bit in means > 127.5:
        word = (word << 1) | int(bit)
    frame_id = word >> 4
    return frame_id if (word & 0xF) == _check(frame_id) else None


def stamp_id(rgb: np.ndarray, frame_id: int) -> None:
    """Write `frame_id`'s blocks into the top strip of `rgb` in place."""
    block = rgb.shape[1] // NUM_BLOCKS
    for i, bit in enumerate(id_bits(frame_id)):
        rgb[:block, i * block:(i + 1) * block] = 255 if bit else 0
