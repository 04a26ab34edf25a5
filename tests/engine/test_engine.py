"""Engine behaviour on a tiny model: bad input, prefix caching, chunked prefill, aborts, async."""
from __future__ import annotations

import asyncio

import pytest

from livecast.engine import LLM, AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama_path):
    return LLM(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=32 << 20, max_model_len=256)


def greedy(n):
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


@pytest.mark.parametrize("kwargs, name", [
    (dict(n=0), "n"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(max_tokens=-1), "max_tokens"),
    (dict(temperature=-0.1), "temperature"), (dict(top_k=-2), "top_k"), (dict(min_p=2.0), "min_p"),
    (dict(best_of=1, n=2), "best_of"), (dict(logprobs=50), "logprobs"), (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(stop=[""]), "stop"),
])
def test_invalid_sampling_params_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingParams(**kwargs)


def test_bad_prompts_raise_and_leave_nothing_behind(llm):
    engine = llm.engine
    with pytest.raises(ValueError, match="empty"):
        llm.generate([""], greedy(4))
    with pytest.raises(ValueError, match="max_model_len"):
        llm.generate([list(range(10, 300))], greedy(4))
    with pytest.raises(ValueError, match="max_tokens"):
        llm.generate([list(range(10, 200))], greedy(100))
    with pytest.raises(ValueError, match="token ids"):
        llm.generate([[5, 10**7]], greedy(4))
    assert not engine.has_unfinished_requests() and engine.block_manager.device.num_used == 0


def test_unknown_model_path_and_architecture(tmp_path):
    with pytest.raises(ValueError, match="neither a local folder"):
        LLMEngine(EngineConfig(model=str(tmp_path / "nope")))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(ValueError, match="supported: LlamaForCausalLM"):
        LLMEngine(EngineConfig(model=str(tmp_path)))


def test_prefix_cache_hit_gives_same_tokens(llm):
    engine = llm.engine
    system = list(range(3000, 3000 + 80))  # 5 full blocks
    first = llm.generate([system + [11, 12]], greedy(8))[0]
    hits_before = engine.block_manager.prefix_hits
    second = llm.generate([system + [11, 12]], greedy(8))[0]
    assert engine.block_manager.prefix_hits - hits_before == 5
    assert second.outputs[0].token_ids == first.outputs[0].token_ids
    assert engine.stats().prefix_cache_hit_rate > 0


def test_chunked_prefill_equals_whole_prefill(tiny_llama_path):
    prompt = list(range(500, 700))
    whole = LLM(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=16 << 20, max_num_batched_tokens=512)
    chunked = LLM(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=16 << 20,
                  max_num_batched_tokens=32, max_num_seqs=8, enable_prefix_caching=False)
    a = whole.generate([prompt], greedy(10))[0].outputs[0].token_ids
    b = chunked.generate([prompt], greedy(10))[0].outputs[0].token_ids
    assert a == b


def test_long_prompt_does_not_stall_running_decodes(tiny_llama_path):
    llm = LLM(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=16 << 20, max_num_batched_tokens=32,
              max_num_seqs=4)
    engine = llm.engine
    engine.add_request("short", [1, 2, 3], greedy(30))
    engine.step()
    engine.add_request("long", list(range(100, 300)), greedy(2))
    short_tokens = []
    for _ in range(6):  # the 200-token prompt needs 7 chunks; the short stream gains a token every step
        for out in engine.step():
            if out.request_id == "short":
                short_tokens.append(len(out.outputs[0].token_ids))
    assert short_tokens == sorted(short_tokens) and len(short_tokens) == 6
    while engine.has_unfinished_requests():
        engine.step()


def test_abort_frees_blocks_at_any_time(llm):
    engine = llm.engine
    engine.add_request("a", list(range(20, 90)), SamplingParams(n=3, temperature=1, max_tokens=50, ignore_eos=True))
    engine.add_request("b", list(range(20, 90)), greedy(50))
    engine.step()
    engine.step()
    assert engine.block_manager.device.num_used > 0
    out = engine.abort_request("a")
    assert out.finished and all(o.finish_reason == "abort" for o in out.outputs)
    engine.abort_request("b")
    assert engine.abort_request("missing") is None
    assert engine.block_manager.device.num_used == 0 and not engine.has_unfinished_requests()


async def test_async_engine_streams_cancels_and_reports_errors(tiny_llama_path):
    engine = AsyncLLMEngine.from_config(EngineConfig(model=str(tiny_llama_path), dtype="float32",
                                                     kv_cache_memory=16 << 20, max_model_len=128))
    try:
        async def collect(rid, n):
            text, count = "", 0
            async for out in engine.generate("hello there", greedy(n), rid, delta=True):
                text += out.outputs[0].text
                count += len(out.outputs[0].token_ids)
            return text, count, out.outputs[0].finish_reason

        results = await asyncio.gather(*(collect(f"r{i}", 10 + i) for i in range(8)))
        assert [r[1] for r in results] == [10 + i for i in range(8)]
        assert all(r[2] == "length" for r in results)

        with pytest.raises(ValueError, match="max_model_len"):
            async for _ in engine.generate(list(range(10, 200)), greedy(4), "too-long"):
                pass

        # a consumer that walks away aborts its request and frees the blocks
        stream = engine.generate("hello", greedy(100), "walk-away")
        await stream.__anext__()
        await stream.aclose()
        for _ in range(100):
            if engine.engine.block_manager.device.num_used == 0 and not engine.engine.requests:
                break
            await asyncio.sleep(0.02)
        assert engine.engine.block_manager.device.num_used == 0

        # explicit abort ends the stream with finish_reason "abort"
        async def aborted():
            async for out in engine.generate("hello", greedy(100), "to-abort"):
                if out.outputs[0].token_ids:
                    engine.abort("to-abort")
            return out.outputs[0].finish_reason
        assert await aborted() == "abort"
    finally:
        await engine.shutdown()


def test_async_engine_loads_on_a_thread_that_is_gone(tiny_llama_path, tmp_path):
    import threading

    engine = AsyncLLMEngine.from_config(EngineConfig(model=str(tiny_llama_path), dtype="float32",
                                                     kv_cache_memory=16 << 20), log_stats=False)
    assert engine.log_stats is False
    assert not any(t.name == "llm-engine-load" for t in threading.enumerate())
    with pytest.raises(ValueError, match="neither a local folder"):  # raised on the caller's thread
        AsyncLLMEngine.from_config(EngineConfig(model=str(tmp_path / "missing")))
    assert not any(t.name == "llm-engine-load" for t in threading.enumerate())
