"""Each supported architecture loads from an HF folder and matches HF greedy tokens (tiny, random)."""
from __future__ import annotations

import pytest

from livecast.engine import LLM, SamplingParams
from tests.conftest import make_tiny_llama
from tests.engine.conftest import hf_greedy


@pytest.mark.parametrize("model_type, extra", [
    ("llama", dict(tie_word_embeddings=True)),
    ("llama", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
    ("qwen2", dict()),
    ("mistral", dict(sliding_window=None)),
])
def test_greedy_matches_hf(tmp_path, smollm2_path, model_type, extra):
    path = make_tiny_llama(tmp_path, smollm2_path, model_type=model_type, **extra)
    llm = LLM(model=str(path), dtype="float32", kv_cache_memory=8 << 20, block_size=8)
    prompts = [[5, 900, 1200, 77], list(range(2000, 2030)), [42] * 3]
    ours = [o.outputs[0].token_ids for o in
            llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))]
    assert ours == hf_greedy(path, prompts, 12)
