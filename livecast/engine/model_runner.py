"""Owns the model, the device and the KV cache tensors; runs one forward over a ModelInput."""
from __future__ import annotations

import torch

from livecast.engine.backend import Backend
from livecast.engine.layers.attention import allocate_kv_cache
from livecast.engine.model_input import ModelInput


class ModelRunner:
    def __init__(self, model: torch.nn.Module, num_layers: int, num_kv_heads: int, head_dim: int,
                 num_blocks: int, num_cpu_blocks: int, block_size: int, dtype: torch.dtype,
                 device: torch.device, backend: Backend) -> None:
        self.model = model
        self.device = device
        # the torch attention path wants head-major storage; the Triton kernels the plain layout
        layout = dict(block_size=block_size, num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype,
                      head_major=not backend.triton)
        self.kv_caches = [(allocate_kv_cache(num_blocks, device=device, **layout),
                           allocate_kv_cache(num_blocks, device=device, **layout)) for _ in range(num_layers)]
        pin = device.type == "cuda"
        cpu_blocks = max(num_cpu_blocks, 1)
        self.cpu_caches = [(allocate_kv_cache(cpu_blocks, device="cpu", pin_memory=pin, **layout),
                            allocate_kv_cache(cpu_blocks, device="cpu", pin_memory=pin, **layout))
                           for _ in range(num_layers)]

    @staticmethod
    def bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()

    @torch.inference_mode()
    def move_blocks(self, swap_out: list[tuple[int, int]], swap_in: list[tuple[int, int]],
                    copies: list[tuple[int, int]]) -> None:
        """Swap-outs read device blocks before anything can overwrite them, so they go first."""
        for pairs, src_caches, dst_caches in ((swap_out, self.kv_caches, self.cpu_caches),
                                              (swap_in, self.cpu_caches, self.kv_caches),
                                              (copies, self.kv_caches, self.kv_caches)):
            if not pairs:
                continue
            src = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
            dst = torch.tensor([p[1] for p in pairs], dtype=torch.int64)
            for (src_k, src_v), (dst_k, dst_v) in zip(src_caches, dst_caches):
                s, d = src.to(src_k.device), dst.to(dst_k.device)
                dst_k.index_copy_(0, d, src_k.index_select(0, s).to(dst_k.device, non_blocking=True))
                dst_v.index_copy_(0, d, src_v.index_select(0, s).to(dst_v.device, non_blocking=True))

    @torch.inference_mode()
    def forward(self, batch: ModelInput) -> torch.Tensor:
        """fp32 logits for the rows in `batch.logits_indices`: (num_logit_rows, vocab_size)."""
        hidden = self.model(batch.input_ids, batch.positions, self.kv_caches, batch.attn, batch.lora)
        return self.model.compute_logits(hidden.index_select(0, batch.logits_indices))
