"""The engine's native prefill attention (kernels.native.paged_prefill, wired in
engine.layers.attention) gives the same greedy tokens as the gather + SDPA reference path: fresh
prompts, chunked prefill and a prefix-cache hit, on tiny float32 models (the native backend)."""
import pytest
import torch

from livecast.engine import LLM, SamplingParams
from livecast.engine.layers import attention
from livecast.kernels import native
from livecast.kernels.native import paged_prefill
from tests.conftest import make_tiny_llama

pytestmark = pytest.mark.skipif(not native.available(), reason="the native prefill needs the native kernels")

PARAMS = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
KERNEL = paged_prefill.prefill_attention


@pytest.fixture(scope="module")
def tiny_gqa3_path(tmp_path_factory, smollm2_path):
    """SmolLM2's attention shape in small: 3 heads over 1 KV head, head_dim 64."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-gqa3"), smollm2_path, seed=1, hidden_size=192,
                           num_attention_heads=3, num_key_value_heads=1)


def _prompts():
    g = torch.Generator().manual_seed(7)
    shared = torch.randint(3, 49152, (40,), generator=g).tolist()  # 5 blocks of 8
    fresh = [torch.randint(3, 49152, (n,), generator=g).tolist() for n in (5, 16, 57)]
    hit = shared + torch.randint(3, 49152, (11,), generator=g).tolist()  # its first 40 tokens cached
    return shared, fresh, hit


def _run(path, use_native: bool, monkeypatch, **overrides):
    """The tokens of each prompt, and the (q_len, seq_len) of every native prefill call."""
    calls = []

    def counted(q, k_cache, v_cache, block_table, seq_len, scale):
        calls.append((q.shape[0], seq_len))
        return KERNEL(q, k_cache, v_cache, block_table, seq_len, scale)

    monkeypatch.setattr(attention, "NATIVE_PREFILL", use_native)
    monkeypatch.setattr(paged_prefill, "prefill_attention", counted)
    llm = LLM(model=str(path), dtype="float32", kv_cache_memory=16 << 20, block_size=8, **overrides)
    assert llm.engine.backend.native and not llm.engine.backend.deterministic
    shared, fresh, hit = _prompts()
    tokens = [out.outputs[0].token_ids for out in llm.generate([shared, *fresh], PARAMS, use_tqdm=False)]
    tokens.append(llm.generate([hit], PARAMS, use_tqdm=False)[0].outputs[0].token_ids)  # a prefix-cache hit
    return tokens, calls


@pytest.mark.parametrize("model", ["tiny_llama_path", "tiny_gqa3_path"])
@pytest.mark.parametrize("max_num_batched_tokens", [1024, 24])  # whole prompts, and chunks of at most 24
def test_native_prefill_gives_the_sdpa_tokens(model, max_num_batched_tokens, request, monkeypatch):
    path = request.getfixturevalue(model)
    limits = dict(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=8)
    ref, ref_calls = _run(path, False, monkeypatch, **limits)
    out, calls = _run(path, True, monkeypatch, **limits)
    assert not ref_calls and calls
    assert out == ref
    assert any(q_len < seq_len for q_len, seq_len in calls)  # chunks after a prefix (cache hit, chunking)
    if max_num_batched_tokens < 57:
        assert max(q_len for q_len, _ in calls) <= max_num_batched_tokens
