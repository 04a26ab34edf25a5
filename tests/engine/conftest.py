"""Engine fixtures: one shared fp32 engine on the real model and the HF greedy reference."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_fp32(smollm2_path):
    """One fp32 engine on the real model, shared by tests that only read from it."""
    from livecast.engine import LLM

    return LLM(model=str(smollm2_path), dtype="float32", kv_cache_memory=256 << 20)


def hf_greedy(path, prompts_ids, max_new_tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for ids in prompts_ids:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                               do_sample=False, eos_token_id=None, pad_token_id=0)
            outs.append(y[0, len(ids):].tolist())
    return outs
