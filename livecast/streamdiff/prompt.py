"""Prompt embeddings with a bounded per-pipeline cache, so switching prompts mid-stream is free,
and StreamDiffusion's prompt blending: a weighted list of prompts conditions on the
weight-normalised sum of their embeddings (linear interpolation in embedding space)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Sequence

import torch

from .config import PromptWeight


class PromptEncoder:
    """CLIP text encoding exactly as diffusers' SD pipelines do it, memoized per prompt (LRU)."""

    def __init__(self, tokenizer, text_encoder: torch.nn.Module, device: torch.device,
                 dtype: torch.dtype, max_cached: int = 64):
        if max_cached < 1:
            raise ValueError(f"max_cached must be >= 1, got {max_cached}")
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.device = device
        self.dtype = dtype
        self.max_cached = max_cached
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()  # services may update prompts off the device thread

    def __call__(self, prompt: str) -> torch.Tensor:
        """(1, L, D) embeddings of `prompt` (the empty string is a valid prompt)."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
        with self._lock:
            if prompt in self._cache:
                self._cache.move_to_end(prompt)
                return self._cache[prompt]
        embeds = self._encode(prompt)
        with self._lock:
            self._cache[prompt] = embeds
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return embeds

    def embed(self, prompt: str | Sequence[PromptWeight]) -> torch.Tensor:
        """(1, L, D) conditioning for a prompt or a blend of prompts (StreamParams.prompt).

        Each distinct text is encoded once (then served from the cache), so changing only the
        weights of a blend costs one weighted sum, no text-encoder call.
        """
        if isinstance(prompt, str):
            return self(prompt)
        # Every entry is encoded, zero weights included: moving a weight up from 0 never stalls.
        embeds = [self(entry.text) for entry in prompt]
        return blend_embeddings(embeds, [entry.weight for entry in prompt])

    @torch.inference_mode()
    def _encode(self, prompt: str) -> torch.Tensor:
        # Same tokenization as StableDiffusionPipeline.encode_prompt: pad/truncate to the context.
        tokens = self.tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.tokenizer.model_max_length)
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return hidden.to(self.dtype)  # (1, L, D)

    def __len__(self) -> int:
        return len(self._cache)


def blend_embeddings(embeds: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum(w_i * e_i) / sum(w_i), computed in float32 and returned in the embeddings' dtype.

    The same linear interpolation applies to pooled embeddings (SDXL-style models); the SD
    1.x/2.x text encoders streamdiff serves condition on the hidden states only. One entry with
    a positive weight returns that entry's own tensor, bit for bit.
    """
    live = [(e, w) for e, w in zip(embeds, weights) if w > 0]
    if len(live) == 1:
        return live[0][0]
    total = sum(w for _, w in live)
    out = torch.zeros_like(live[0][0], dtype=torch.float32)
    for e, w in live:
        out.add_(e.float(), alpha=w / total)
    return out.to(live[0][0].dtype)
