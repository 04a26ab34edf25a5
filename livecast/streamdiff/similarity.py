"""Stochastic Similarity Filter, made deterministic: skip a frame that barely changed.

StreamDiffusion skips with a probability that grows with similarity; a live service wants the
same input sequence to give the same outputs, so here a frame is skipped exactly when its cosine
similarity to the last processed input reaches the threshold, and never more than
`max_skip_frames` times in a row (so a slowly drifting scene still refreshes).
"""
from __future__ import annotations

import torch


class SimilarityFilter:
    def __init__(self, threshold: float, max_skip_frames: int):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if max_skip_frames < 0:
            raise ValueError(f"max_skip_frames must be >= 0, got {max_skip_frames!r}")
        self.threshold = threshold
        self.max_skip_frames = max_skip_frames
        self._reference: torch.Tensor | None = None  # flattened last processed input
        self._reference_key: object = None
        self.consecutive_skips = 0

    def should_skip(self, image: torch.Tensor, key: object = None) -> bool:
        """True to reuse the previous output for `image`; False records it as the new reference.

        `key` (e.g. the original frame size) must match the reference's for a skip, so a
        resized input never gets an output of the old size.
        """
        flat = image.reshape(-1).float()
        if self._reference is not None and key == self._reference_key \
                and self.consecutive_skips < self.max_skip_frames:
            similarity = torch.nn.functional.cosine_similarity(flat, self._reference, dim=0)
            if similarity.item() >= self.threshold:
                self.consecutive_skips += 1
                return True
        self._reference, self._reference_key = flat.clone(), key
        self.consecutive_skips = 0
        return False

    def reset(self) -> None:
        self._reference, self._reference_key = None, None
        self.consecutive_skips = 0
