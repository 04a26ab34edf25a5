"""Speculative decoding (EngineConfig.speculative): exact by construction, so a request's tokens are
the same with it as without it: greedy, seeded and under every logits processor; unseeded samples
follow the same distribution. Rejected drafts leave nothing behind: no leaked blocks, no prefix-cache
block holding them, through preemption (swap and recompute), aborts and grammars.

The tiny random model never repeats itself, so prompt lookup proposes nothing on it; the engine tests
swap in a scripted proposer that guesses the no-speculation output with planted mistakes (drafts
accepted whole, in part, and rejected at once). The ngram proposer has its own unit tests; the real
model's acceptance on a quote is measured by `livecast bench throughput --speculative ngram`.
"""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from livecast.engine import EngineConfig, LLMEngine, SamplingParams
from livecast.engine.spec import SpecState, Speculator
from livecast.engine.spec.ngram import NgramProposer
from livecast.kernels import native
from tests.conftest import make_tiny_llama

VOCAB = 49152


# -- the ngram proposer ------------------------------------------------------------------------
def test_ngram_proposes_what_followed_the_longest_most_recent_match():
    p = NgramProposer(max_n=3, min_n=1)
    # the tail (7, 8, 9) occurred at 1..3 (followed by 10, 11); (8, 9) alone later at 6..7 (followed by 50)
    tokens = [6, 7, 8, 9, 10, 11, 8, 9, 50, 51, 7, 8, 9]
    assert p.propose(tokens, 2) == [10, 11]
    assert p.propose(tokens, 5) == [10, 11, 8, 9, 50]
    # only a 1-gram matches: its most recent earlier occurrence wins
    assert p.propose([1, 2, 3, 2, 4, 5, 2], 2) == [4, 5]


def test_ngram_edge_cases():
    p = NgramProposer(max_n=4, min_n=2)
    assert p.propose([1, 2, 3, 4], 3) == []  # no repeat
    assert p.propose([1, 2, 3, 1], 3) == []  # a 1-gram is below min_n
    assert p.propose([1, 2, 3, 1, 2], 0) == []
    assert p.propose([1], 3) == []
    # a run: the continuation may overlap the tail and is cut where the sequence ends
    assert p.propose([5, 5, 5, 5], 4) == [5]
    assert p.propose([1, 2, 1, 2, 1, 2], 8) == [1, 2]
    assert NgramProposer(max_n=2, max_lookback=3).propose([1, 2, 9, 9, 9, 1, 2], 2) == []
    with pytest.raises(ValueError):
        NgramProposer(max_n=1, min_n=2)


def test_adaptive_k_shrinks_pauses_and_grows_back():
    spec = Speculator(NgramProposer(), num_speculative_tokens=4)
    state = SpecState()
    assert spec.num_drafts(state) == 4
    for _ in range(3):
        spec.record(state, 4, 1)
    assert 1 <= spec.num_drafts(state) < 4
    while state.paused_steps == 0:
        spec.record(state, 4, 0)
    assert all(spec.num_drafts(state) == 0 for _ in range(spec.pause_steps))
    ks = []
    for _ in range(8):
        ks.append(spec.num_drafts(state))
        spec.record(state, ks[-1], ks[-1])
    assert ks[0] >= 1 and ks[-1] == 4 and ks == sorted(ks)
    assert spec.num_accepted_tokens <= spec.num_draft_tokens


# -- the engine --------------------------------------------------------------------------------
class ScriptedProposer:
    """Guesses from reference outputs (prompt + tokens): the reference's next k tokens after a
    sequence that is one of its prefixes, with a wrong first draft every 5th length and a wrong
    second draft every 3rd."""

    def __init__(self, references: list[list[int]]) -> None:
        self.references = references
        self.first_tokens: set[int] = set()

    def propose(self, token_ids: list[int], k: int, state=None) -> list[int]:
        self.first_tokens.add(token_ids[0])
        n = len(token_ids)
        for ref in self.references:
            if ref[:n] == token_ids:
                drafts = ref[n:n + k]
                if n % 5 == 0 and drafts:
                    drafts[0] = (drafts[0] + 1) % VOCAB
                elif n % 3 == 0 and len(drafts) > 1:
                    drafts[1] = (drafts[1] + 1) % VOCAB
                return drafts
        return []


def _engine(path, speculative: bool | str, **overrides) -> LLMEngine:
    """speculative: False (off), True (ngram) or a proposer's name."""
    config = dict(model=str(path), dtype="float32", kv_cache_memory=8 << 20, block_size=8,
                  deterministic=native.available(),
                  speculative="ngram" if speculative is True else speculative or None,
                  num_speculative_tokens=4)
    config.update(overrides)
    return LLMEngine(EngineConfig(**config))


def _run(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]], check=None,
         abort_after: dict[str, int] | None = None, on_abort=None) -> dict[str, list[int]]:
    """Every request to the end, aborting `abort_after`'s at their step (then `on_abort(group)`),
    `check(engine)` after each step; nothing may leak."""
    for i, (prompt, params) in enumerate(requests):
        engine.add_request(f"r{i}", prompt, params)
    outputs, steps = {}, 0
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            outputs[out.request_id] = out.outputs[0].token_ids
        assert not engine.step_errors, engine.step_errors
        for request_id, at in (abort_after or {}).items():
            if steps == at:
                group = engine.requests[request_id]
                engine.abort_request(request_id)
                if on_abort:
                    on_abort(group)
        if check:
            check(engine)
    _assert_nothing_leaked(engine)
    return {rid: outputs[rid] for rid in sorted(outputs)}


def _assert_nothing_leaked(engine: LLMEngine) -> None:
    bm = engine.block_manager
    assert bm.device.num_used == 0 and not bm.block_tables and not bm.cpu_tables
    assert all(count == 0 for count in bm.device.ref_counts)
    assert bm.cpu.num_used == 0


def _check_tables(engine: LLMEngine) -> None:
    """After every step: no table holds a block past its sequence's tokens, only computed blocks are
    registered, and each block's ref count is the number of tables holding it."""
    bm = engine.block_manager
    holders: dict[int, int] = {}
    for group in engine.scheduler.running:
        for seq in group.unfinished_seqs():
            table = bm.block_tables[seq.seq_id]
            assert len(table) <= -(-len(seq.token_ids) // bm.block_size)
            assert len(bm._hashes[seq.seq_id]) * bm.block_size <= seq.num_computed_tokens < len(seq.token_ids)
            for block_id in table:
                holders[block_id] = holders.get(block_id, 0) + 1
    for block_id, count in holders.items():
        assert bm.device.ref_counts[block_id] == count


def _with_scripted(engine: LLMEngine, references: list[list[int]]) -> ScriptedProposer:
    proposer = ScriptedProposer(references)
    engine.speculator.proposer = proposer
    return proposer


def _references(requests, outputs) -> list[list[int]]:
    return [prompt + outputs[f"r{i}"] for i, (prompt, _) in enumerate(requests)]


REPETITIVE = [5, 6, 7, 8, 9, 10, 11, 12] * 5
PLAIN = [300, 301, 302, 303, 304, 305, 306, 307, 308]


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


def _spec_vs_plain(path, requests, check=_check_tables, abort_after=None, **overrides):
    plain = _run(_engine(path, False, **overrides), requests)
    engine = _engine(path, True, **overrides)
    proposer = _with_scripted(engine, _references(requests, plain))
    spec = _run(engine, requests, check, abort_after)
    return plain, spec, engine, proposer


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_greedy_tokens_identical_with_speculation_in_a_mixed_batch(tiny_llama_path):
    requests = [(REPETITIVE, _greedy(24)), (PLAIN, _greedy(20)), ([40, 41, 42] * 7, _greedy(17)),
                ([900, 901, 902], _greedy(9, speculative=False)), (REPETITIVE[3:30], _greedy(1))]
    plain, spec, engine, proposer = _spec_vs_plain(tiny_llama_path, requests)
    assert spec == plain
    s = engine.stats()
    assert s.spec_accepted_tokens_total > 0 and s.spec_draft_tokens_total > s.spec_accepted_tokens_total
    assert 1 < s.spec_mean_accepted_length <= 5
    assert "Spec acceptance" in s.log_line()
    assert s.generation_tokens_total == sum(len(t) for t in plain.values())
    assert 900 not in proposer.first_tokens  # the opted-out request was never asked for drafts


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_seeded_samples_identical_with_speculation_under_every_processor(tiny_llama_path):
    """Each emitted token is one draw from the request's generator, spec or not."""
    processors = [dict(), dict(top_p=0.8, top_k=50), dict(min_p=0.05, repetition_penalty=1.3),
                  dict(presence_penalty=0.5, frequency_penalty=0.5, logit_bias={7: 5.0, 8: -100}),
                  dict(min_tokens=10, temperature=0.7, logprobs=2)]
    requests = [(REPETITIVE[i:], SamplingParams(**{"temperature": 1.0, "seed": 100 + i, "max_tokens": 16, **kw}))
                for i, kw in enumerate(processors)]
    plain, spec, engine, _ = _spec_vs_plain(tiny_llama_path, requests)
    assert spec == plain
    assert engine.speculator.num_accepted_tokens > 0


class TableProposer:
    """Proposes, after the prompt and one sampled token, that token's likeliest continuation."""

    def __init__(self, prompt_len: int, table: dict[int, list[int]]) -> None:
        self.prompt_len, self.table = prompt_len, table

    def propose(self, token_ids: list[int], k: int, state=None) -> list[int]:
        if len(token_ids) != self.prompt_len + 1:
            return []
        return self.table.get(token_ids[-1], [])[:k]


@pytest.fixture(scope="module")
def small_vocab_path(tmp_path_factory, smollm2_path):
    """A tiny Llama over 256 tokens: peaked enough at temperature 1 for a chi-square on 2,000 samples."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-256"), smollm2_path, vocab_size=256, seed=1,
                           hidden_size=256, intermediate_size=256)


def test_sampled_distribution_unchanged_by_speculation(small_vocab_path):
    """Two-sample chi-square over 2,000 samples each (seeded, so it cannot flake) of the 2nd, 3rd
    and 4th tokens and the first pair at temperature 1, drafts accepted and rejected often."""
    prompt, num = [17, 18, 19, 20], 2000
    config = dict(max_num_seqs=256, max_num_batched_tokens=2048, spec_max_batch=256, kv_cache_memory=32 << 20,
                  max_waiting=4096, deterministic=False)
    probe = _engine(small_vocab_path, False, **config)
    top5 = _top5(probe, prompt)
    likely = _run(probe, [(prompt + [t], _greedy(2)) for t in top5])
    table = {t: likely[f"r{i}"] for i, t in enumerate(top5)}
    samples = {}
    for speculative, seed0 in ((False, 0), (True, 10_000)):
        engine = _engine(small_vocab_path, speculative, **config)
        if speculative:
            engine.speculator.proposer = TableProposer(len(prompt), table)
        params = [SamplingParams(temperature=1.0, seed=seed0 + i, max_tokens=4, ignore_eos=True) for i in range(num)]
        samples[speculative] = list(_run(engine, [(prompt, p) for p in params]).values())
        if speculative:
            assert 0.1 < engine.stats().spec_acceptance_rate < 0.9
    for outcome in (lambda t: t[1], lambda t: t[2], lambda t: t[3], lambda t: (t[0], t[1])):
        counts = _contingency([outcome(t) for t in samples[False]], [outcome(t) for t in samples[True]])
        assert counts.shape[1] >= 4
        assert chi2_contingency(counts).pvalue > 0.001


def _top5(engine: LLMEngine, prompt: list[int]) -> list[int]:
    engine.add_request("top", prompt, SamplingParams(temperature=0, max_tokens=1, logprobs=5))
    while engine.has_unfinished_requests():
        for out in engine.step():
            entry = out.outputs[0].logprobs[0]
    return list(entry)


def _contingency(a: list, b: list) -> np.ndarray:
    """Counts per outcome (rows: a, b), outcomes rarer than 10 in both lumped into one column."""
    outcomes = sorted(set(a) | set(b))
    counts = {o: (a.count(o), b.count(o)) for o in outcomes}
    common = [c for c in counts.values() if sum(c) >= 10]
    rare = [sum(c[0] for c in counts.values() if sum(c) < 10), sum(c[1] for c in counts.values() if sum(c) < 10)]
    columns = common + ([tuple(rare)] if sum(rare) else [])
    return np.array(columns).T


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_prefix_cache_never_serves_rejected_drafts(tiny_llama_path):
    """A request with many rejections, then its prompt + output as a new prompt on the same engine
    (a prefix-cache hit over blocks the first one filled): the continuation equals a cold engine's."""
    first = [(REPETITIVE, _greedy(40))]
    plain, spec, engine, proposer = _spec_vs_plain(tiny_llama_path, first)
    assert spec == plain and engine.speculator.num_draft_tokens > engine.speculator.num_accepted_tokens
    again = REPETITIVE + spec["r0"][:37]
    cold = _run(_engine(tiny_llama_path, False), [(again, _greedy(6))])
    engine.speculator.proposer = ScriptedProposer([again + cold["r0"]])
    engine.add_request("again", again, _greedy(6))
    outputs = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs[out.request_id] = out.outputs[0].token_ids
    assert engine.block_manager.prefix_hits > 0
    assert outputs["again"] == cold["r0"]
    _assert_nothing_leaked(engine)


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_during_speculation(tiny_llama_path, mode):
    """A KV cache too small for the batch: requests are preempted while they speculate."""
    requests = [(REPETITIVE[i:i + 20], _greedy(30)) for i in range(4)]
    # 4 096-byte blocks of 8 tokens (2 layers, 2 KV heads, head_dim 16, float32): 24 blocks for 4 x 7 needed
    plain, spec, engine, _ = _spec_vs_plain(tiny_llama_path, requests, kv_cache_memory=24 * 4096,
                                            preemption_mode=mode, swap_space=0.0 if mode == "recompute" else 1.0)
    assert spec == plain
    assert engine.scheduler.num_preemptions > 0 and engine.speculator.num_accepted_tokens > 0


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_abort_mid_speculation_leaks_nothing(tiny_llama_path):
    requests = [(REPETITIVE, _greedy(30)), (PLAIN, _greedy(30)), (REPETITIVE[8:], _greedy(30))]
    plain, spec, engine, _ = _spec_vs_plain(tiny_llama_path, requests, abort_after={"r1": 4})
    assert spec["r0"] == plain["r0"] and spec["r2"] == plain["r2"]
    assert len(spec["r1"]) < 30 and spec["r1"] == plain["r1"][:len(spec["r1"])]


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["verdict", "size", "ok"],
          "properties": {"verdict": {"enum": ["accepted", "rejected"]}, "size": {"enum": ["small", "large"]},
                         "ok": {"type": "boolean"}}}


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_grammar_constrained_request_unchanged(tiny_llama_path):
    from livecast.services.llm.structured import GrammarCache

    engine = _engine(tiny_llama_path, False)
    cache = GrammarCache(engine.tokenizer, engine.hf_config.vocab_size, sorted(engine.eos_token_ids))
    grammar = asyncio.run(cache.json_schema(SCHEMA))
    requests = [([5 + i, 6, 7, 8], SamplingParams(temperature=t, seed=i, max_tokens=64, grammar=grammar))
                for i, t in enumerate((0.0, 0.8))]
    for jump_forward in (True, False):
        plain, spec, engine, _ = _spec_vs_plain(tiny_llama_path, requests, jump_forward=jump_forward)
        assert spec == plain
        assert engine.speculator.num_accepted_tokens > 0


def test_stats_and_metrics_report_speculation():
    from livecast.engine.stats import EngineStats
    from livecast.services.llm.metrics import EngineCollector

    s = EngineStats(0, 0, 0, 0.0, 0.0, 0.0, 10, 20, 0, 1, 0.0, 0.0, spec_draft_tokens_total=40,
                    spec_accepted_tokens_total=30, spec_verify_steps_total=10)
    assert s.spec_acceptance_rate == 0.75 and s.spec_mean_accepted_length == 4.0
    assert "Spec acceptance: 75.0%, mean accepted length: 4.00" in s.log_line()
    values = {m.name: m.samples[0].value for m in EngineCollector(lambda: s).collect()}
    assert values["livecast_spec_draft_tokens"] == 40 and values["livecast_spec_accepted_tokens"] == 30
    off = EngineStats(0, 0, 0, 0.0, 0.0, 0.0, 10, 20, 0, 1, 0.0, 0.0)
    assert off.spec_acceptance_rate == 0.0 and "Spec" not in off.log_line()


@pytest.mark.skipif(not native.available(), reason="the fused stack is the native kernels'")
def test_verification_runs_on_the_fused_native_stack_like_decoding():
    """On the default Q4_1 model the verify rows (k+1 per sequence, past the prompt) take the
    fused native decode stack with per-token tables, as decodes do, not the torch prefill path."""
    from livecast.services.bench.speculative import PROMPT

    engine = LLMEngine(EngineConfig(quantization="gguf", weight_kernel="int4", kv_cache_memory=32 << 20,
                                    speculative="ngram", num_speculative_tokens=4))
    stack = engine.model.native_decode.stack
    rows_per_call, run = [], stack.run
    stack.run = lambda hidden, *args: rows_per_call.append(hidden.shape[0]) or run(hidden, *args)
    ids = engine.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    _run(engine, [(ids, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True))])
    assert engine.speculator.num_accepted_tokens > 0
    assert max(rows_per_call) > 1  # a verification: one sequence, several rows, one stack call
    assert sum(r > 1 for r in rows_per_call) == engine.speculator.num_verify_steps  # each one on the stack
