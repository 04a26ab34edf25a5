"""The CPU memory plan: one budget for both engines; the KV cache gets what is left, capped."""
from __future__ import annotations

import dataclasses

import pytest

from livecast.engine import EngineConfig
from livecast.services.media.service import MediaService
from livecast.services.runtime.memory import MemoryConfig, plan_kv_cache_bytes, plan_memory
from livecast.streamdiff import StreamPipeline

GiB = 1 << 30


def test_the_kv_cache_gets_what_is_left_up_to_the_cap():
    assert plan_kv_cache_bytes("cpu", 4 * GiB, GiB, GiB // 2) == 2 * GiB  # 2.5 left, capped at 2
    assert plan_kv_cache_bytes("cpu", 3 * GiB, GiB, GiB // 2) == GiB + GiB // 2
    with pytest.raises(ValueError, match="leaves nothing for the KV cache"):
        plan_kv_cache_bytes("cpu", GiB, GiB, 1)


def test_plan_memory_counts_diffusion_and_llm_weights(tiny_llama_path):
    diffusion = MediaService(StreamPipeline.from_pretrained("demo", resolution=64))
    try:
        engine = EngineConfig(model=str(tiny_llama_path), dtype="float32")
        budget = MemoryConfig(memory_budget=GiB // 2)
        estimated = plan_memory(engine, budget, diffusion).kv_cache_memory
        weights = sum(p.numel() * p.element_size() for m in (diffusion.pipe.unet, diffusion.pipe.vae,
                                                             diffusion.pipe.text_encoder) for p in m.parameters())
        llm_only = plan_memory(engine, budget, None).kv_cache_memory
        assert llm_only - estimated == int(weights * 1.5)  # weights plus activations estimated
        declared = plan_memory(engine, MemoryConfig(GiB // 2, diffusion_memory=100 << 20), diffusion).kv_cache_memory
        assert llm_only - declared == 100 << 20
        # an explicit KV size or no budget leaves the settings alone
        fixed = dataclasses.replace(engine, kv_cache_memory=GiB)
        assert plan_memory(fixed, budget, diffusion).kv_cache_memory == GiB
        assert plan_memory(engine, MemoryConfig(), diffusion).kv_cache_memory is None
        with pytest.raises(ValueError, match="leaves nothing"):
            plan_memory(engine, MemoryConfig(memory_budget=1 << 20), diffusion)
        with pytest.raises(ValueError, match="diffusion_memory must be > 0"):
            MemoryConfig(GiB, diffusion_memory=0)
    finally:
        diffusion.metrics.close()
