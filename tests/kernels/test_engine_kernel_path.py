"""The engine's greedy tokens through the Triton kernels equal its torch path (tiny model)."""
from __future__ import annotations

from livecast.engine import LLM, SamplingParams


def test_triton_backend_matches_torch_backend(tiny_llama_path):
    prompts = [[5, 900, 1200, 77], list(range(2000, 2021)), [42] * 3]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    runs = {}
    for backend in ("torch", "triton"):
        llm = LLM(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=4 << 20, block_size=8,
                  attention_backend=backend, max_num_batched_tokens=16, max_num_seqs=4)
        runs[backend] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        assert llm.engine.block_manager.device.num_used == 0
    assert runs["triton"] == runs["torch"]
