"""A request that fails on its own never fails the others sharing its batch."""
from __future__ import annotations

import asyncio

import pytest

from livecast.engine import AsyncLLMEngine, EngineConfig, SamplingParams


class _BrokenMatcher:
    """A grammar matcher whose mask blows up mid-generation, as a buggy grammar would."""

    def __init__(self) -> None:
        self.calls = 0

    def fill_next_token_bitmask(self, bitmask, index=0):
        self.calls += 1
        if self.calls > 2:
            raise RuntimeError("matcher exploded")
        bitmask[index].fill_(-1)

    def accept_token(self, token_id):
        return True

    def is_terminated(self):
        return False

    def find_jump_forward_string(self):
        return ""


@pytest.fixture
def engine(tiny_llama_path):
    engine = AsyncLLMEngine.from_config(EngineConfig(model=str(tiny_llama_path), dtype="float32",
                                                     kv_cache_memory=32 << 20), log_stats=False)
    yield engine
    engine.abort_all()


async def _run(engine, request_id, params):
    tokens, reason = 0, None
    async for out in engine.generate([5, 6, 7, 8, 9], params, request_id, delta=True):
        tokens += len(out.outputs[0].token_ids)
        reason = out.outputs[0].finish_reason
    return tokens, reason


async def test_a_poisoned_request_fails_alone(engine):
    good = SamplingParams(temperature=0.8, seed=1, max_tokens=24, ignore_eos=True)
    poisoned = SamplingParams(temperature=0.8, max_tokens=24, ignore_eos=True, grammar=_BrokenMatcher)
    tasks = [asyncio.create_task(_run(engine, f"good-{i}", good)) for i in range(4)]
    tasks.insert(2, asyncio.create_task(_run(engine, "poisoned", poisoned)))
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 120)
    error = results.pop(2)
    assert isinstance(error, ValueError) and "matcher exploded" in str(error)
    assert results == [(24, "length")] * 4  # the others ran to completion, untouched
    core = engine.engine
    assert not core.requests and core.block_manager.device.num_used == 0  # nothing leaked


@pytest.mark.parametrize("field, value", [("top_k", 2 ** 63), ("stop_token_ids", [-(2 ** 70)]), ("seed", 2 ** 64),
                                          ("temperature", float("inf")), ("repetition_penalty", float("nan")),
                                          ("logit_bias", {5: 1000}), ("n", 2 ** 40)])
def test_out_of_range_numbers_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} "):
        SamplingParams(**{field: value, "min_tokens": 1})


def test_requests_too_wide_for_the_engine_are_refused(engine):
    core = engine.engine
    with pytest.raises(ValueError, match="best_of"):
        core.make_request("wide", [1, 2, 3], SamplingParams(n=core.config.max_best_of + 1, temperature=1.0,
                                                            max_tokens=4))
    with pytest.raises(ValueError, match="logit_bias has token ids outside the vocabulary"):
        core.make_request("bias", [1, 2, 3], SamplingParams(logit_bias={10 ** 8: 1.0}, max_tokens=4))


async def test_logit_bias_steers_sampling(engine):
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, logit_bias={42: 100.0})
    out = [o async for o in engine.generate([5, 6, 7], params, "biased")][-1]
    assert out.outputs[0].token_ids == [42] * 6


async def test_queued_aborts_do_not_fill_the_queue(tiny_llama_path):
    """A refused request leaves an abort command behind; it must not make the next one a 503."""
    engine = AsyncLLMEngine.from_config(EngineConfig(model=str(tiny_llama_path), dtype="float32",
                                                     kv_cache_memory=32 << 20, max_waiting=1), log_stats=False)
    engine.set_notify(lambda: None)  # nothing steps the engine: commands stay queued
    for i in range(3):
        engine.abort(f"gone-{i}")
    stream = engine.generate([1, 2, 3], SamplingParams(max_tokens=2), "fresh")
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert engine.num_waiting() == 1  # admitted despite 3 queued aborts
    with pytest.raises(Exception, match="too many requests"):
        await anext(engine.generate([1, 2, 3], SamplingParams(max_tokens=2), "second"))
    while engine.step():
        await asyncio.sleep(0)
    assert (await first).request_id == "fresh"
    await stream.aclose()
