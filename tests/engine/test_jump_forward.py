"""Jump-forward decoding: text a grammar forces is appended without sampling, in one chunk."""
from __future__ import annotations

import asyncio
import json

import pytest

from livecast.engine import EngineConfig, LLMEngine, SamplingParams
from livecast.services.llm.structured import GrammarCache

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["verdict", "size", "ok"],
          "properties": {"verdict": {"enum": ["accepted", "rejected"]}, "size": {"enum": ["small", "large"]},
                         "ok": {"type": "boolean"}}}


@pytest.fixture(scope="module")
def grammar(tiny_llama_path):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=16 << 20))
    cache = GrammarCache(engine.tokenizer, engine.hf_config.vocab_size, sorted(engine.eos_token_ids))
    return asyncio.run(cache.json_schema(SCHEMA))


def run(tiny_llama_path, grammar, jump_forward: bool, **params):
    engine = LLMEngine(EngineConfig(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=16 << 20,
                                    jump_forward=jump_forward))
    for i in range(3):
        engine.add_request(f"r{i}", [5 + i, 6, 7, 8], SamplingParams(temperature=0.8, seed=i, max_tokens=64,
                                                                     grammar=grammar, **params))
    steps, outputs = 0, {}
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            outputs[out.request_id] = out.outputs[0]
    assert engine.block_manager.device.num_used == 0
    return steps, [outputs[f"r{i}"] for i in range(3)]


def test_forced_text_costs_no_decode_steps_and_output_stays_valid(tiny_llama_path, grammar):
    slow_steps, slow = run(tiny_llama_path, grammar, jump_forward=False)
    fast_steps, fast = run(tiny_llama_path, grammar, jump_forward=True)
    for out in slow + fast:
        value = json.loads(out.text)
        assert set(value) == {"verdict", "size", "ok"} and value["size"] in ("small", "large"), out.text
        assert out.finish_reason == "stop"
    # the keys and punctuation (~20 tokens per object) are forced: only the value choices decode
    assert fast_steps * 2 <= slow_steps, (fast_steps, slow_steps)
    assert sum(len(o.token_ids) for o in fast) >= 3 * 10


def test_logprob_requests_decode_every_token(tiny_llama_path, grammar):
    _, outputs = run(tiny_llama_path, grammar, jump_forward=True, logprobs=1)
    for out in outputs:
        json.loads(out.text)
        assert len(out.logprobs) == len(out.token_ids)
        assert all(entry[token] <= 0 for entry, token in zip(out.logprobs, out.token_ids))
        assert any(entry[token] < 0 for entry, token in zip(out.logprobs, out.token_ids))
