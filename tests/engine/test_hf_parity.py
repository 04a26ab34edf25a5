"""Greedy tokens equal HF transformers' on the real SmolLM2 weights (fp32), batched together,
and still equal when a tiny KV pool forces preemption by swap or by recompute."""
from __future__ import annotations

import pytest

from livecast.engine import LLM, SamplingParams
from tests.engine.conftest import hf_greedy

PROMPTS = [
    "The capital of France is",
    "Write a Python function that reverses a linked list.\n\ndef reverse(head):",
    "请用中文介绍一下长城。",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 5, 8, 13,",
    "SELECT name, COUNT(*) FROM users",
    "Emoji story: 🐶🐱🐭 then",
    "Translate to French: The weather is nice today and I would like to go for a walk in the park "
    "with my friends, then have dinner at a small restaurant near the river. " * 6,
]
MAX_TOKENS = 24
BLOCK_BYTES_FP32 = 2 * 30 * 16 * 3 * 64 * 4  # SmolLM2: layers x block x kv heads x head dim


@pytest.fixture(scope="module")
def reference(smollm2_path, smollm2_fp32):
    prompt_ids = [smollm2_fp32.tokenizer.encode(p) for p in PROMPTS]
    return prompt_ids, hf_greedy(smollm2_path, prompt_ids, MAX_TOKENS)


def _greedy(llm, prompt_ids):
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(prompt_ids, params)]


def test_batched_greedy_matches_hf(smollm2_fp32, reference):
    prompt_ids, expected = reference
    assert len(prompt_ids[-1]) > 150  # the long prompt crosses many blocks and prefill chunks
    assert _greedy(smollm2_fp32, prompt_ids) == expected
    assert smollm2_fp32.engine.block_manager.device.num_used == 0


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_greedy_matches_hf_under_preemption(smollm2_path, reference, mode):
    prompt_ids, expected = reference
    llm = LLM(model=str(smollm2_path), dtype="float32", kv_cache_memory=24 * BLOCK_BYTES_FP32,
              max_num_batched_tokens=128, max_num_seqs=8, preemption_mode=mode,
              swap_space=0.05 if mode == "swap" else 0)
    assert _greedy(llm, prompt_ids) == expected
    assert llm.engine.scheduler.num_preemptions > 0
    if mode == "swap":
        assert llm.engine.block_manager.cpu.num_used == 0
    assert llm.engine.block_manager.device.num_used == 0
