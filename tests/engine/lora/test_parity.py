"""Three adapters and the base in one batch equal HF transformers with each adapter merged (peft
`merge_and_unload`), greedy tokens and logprobs, through every LoRA kernel of this machine."""
from __future__ import annotations

import pytest
import torch

from livecast.engine import LLMEngine, SamplingParams
from tests.engine.lora.conftest import ADAPTERS, greedy_with_logprobs, merged_model

PROMPTS = [[1, 523, 3421, 88, 17, 905], [1, 44, 2048, 7, 7, 1200, 331, 90, 12], [1, 300, 301, 302],
           [1, 9000, 16, 16, 77, 123, 4567, 8, 1, 2]]
MAX_NEW = 10


@pytest.fixture(scope="module")
def references(tiny_llama_path, tiny_adapters):
    refs = {}
    for name in [None, *ADAPTERS]:
        model = merged_model(tiny_llama_path, tiny_adapters[name] if name else None)
        refs[name] = [greedy_with_logprobs(model, ids, MAX_NEW) for ids in PROMPTS]
    return refs


def make_engine(path, adapters, kernel, **kw):
    engine = LLMEngine(model=str(path), dtype="float32", kv_cache_memory=kw.pop("kv_cache_memory", 8 << 20),
                       block_size=8, enable_lora=True, max_lora_rank=8, **kw)
    for name, folder in adapters.items():
        engine.add_lora(name, str(folder))
    engine.lora.slots.kernel = kernel
    return engine


def run(engine, requests, stagger: int = 0):
    """requests: (request_id, prompt ids, params); every `stagger` steps one more joins (mixed steps)."""
    pending, outputs = list(requests), {}
    while pending or engine.has_unfinished_requests():
        for _ in range(1 if stagger else len(pending)):
            if pending:
                engine.add_request(*pending.pop(0))
        for _ in range(max(stagger, 1)):
            for out in engine.step():
                if out.finished:
                    outputs[out.request_id] = out
    return outputs


@pytest.mark.parametrize("kernel, lora_dtype", [("torch", "auto"), ("native", "auto"), ("native", "float32")])
def test_three_adapters_and_the_base_in_one_batch_match_hf_peft_merged(tiny_llama_path, tiny_adapters,
                                                                        references, kernel, lora_dtype):
    engine = make_engine(tiny_llama_path, tiny_adapters, kernel, lora_dtype=lora_dtype)
    assert engine.lora.dtype == (torch.float32 if lora_dtype == "float32" else torch.bfloat16)
    requests = []
    for i, ids in enumerate(PROMPTS):
        for name in [None, *ADAPTERS]:
            requests.append((f"{name}-{i}", ids, SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True,
                                                                logprobs=0, lora=name)))
    outputs = run(engine, requests, stagger=1)  # decodes of some adapters beside prefills of others
    for i in range(len(PROMPTS)):
        for name in [None, *ADAPTERS]:
            out = outputs[f"{name}-{i}"].outputs[0]
            tokens, logprobs = references[name][i]
            assert out.token_ids == tokens, (name, i)
            got = [lp[t] for lp, t in zip(out.logprobs, out.token_ids)]
            assert got == pytest.approx(logprobs, abs=2e-3), (name, i)
    # the adapters do change the model: every one differs from the base somewhere
    for name in ADAPTERS:
        assert references[name] != references[None]
