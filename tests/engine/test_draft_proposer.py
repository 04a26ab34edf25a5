"""The draft-model proposer (`speculative="draft"`, engine/spec/draft.py): a second model with its
own paged KV cache guesses greedily; the engine verifies, so outputs equal speculation off whatever
the draft. Tiny random Llamas over SmolLM2's tokenizer: the target as its own draft (every guess
right), the target with a noisy lm_head (guesses partly right: rollbacks), and a 1-layer, 32-wide
draft (almost every guess wrong). Nothing of the draft's cache outlives its request: finished,
aborted, preempted (swap and recompute) or refused for want of draft blocks.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from livecast.engine import EngineConfig, LLMEngine, SamplingParams
from livecast.engine.sequence import Sequence
from livecast.engine.spec.draft import DraftProposer
from livecast.kernels import native
from tests.conftest import make_tiny_llama
from tests.engine.test_speculative import _run as run_engine

pytestmark = pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")

VOCAB = 1024
REPETITIVE = [5, 6, 7, 8, 9, 10, 11, 12] * 5


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True, **kw)


def _seeded(i: int, **kw) -> SamplingParams:
    return SamplingParams(temperature=1.0, seed=40 + i, max_tokens=10, ignore_eos=True, **kw)


# greedy and seeded requests in one batch; one opts out, so it is never asked for drafts
REQUESTS = [(REPETITIVE, _greedy(20)), ([300, 301, 302, 303, 304, 305, 306, 307, 308], _greedy(16)),
            ([40, 41, 42] * 7, _greedy(12)), ([900, 901, 902], _greedy(6, speculative=False)),
            (REPETITIVE[3:], _seeded(0, top_k=20)), ([77, 78, 79, 80], _seeded(1, repetition_penalty=1.3)),
            ([500, 9, 501], _seeded(2, min_tokens=6, top_p=0.9, logprobs=2))]


def _engine(target, draft=None, **overrides) -> LLMEngine:
    config = dict(model=str(target), device="cpu", dtype="float32", kv_cache_memory=8 << 20, block_size=8,
                  deterministic=True,  # identical logits spec on and off: the CPU's batch-invariant numerics
                  speculative="draft" if draft else None, draft_model=draft and str(draft), num_speculative_tokens=4)
    config.update(overrides)
    return LLMEngine(EngineConfig(**config))


def _run(engine: LLMEngine, requests=REQUESTS, check=None, abort_after: dict[str, int] | None = None):
    def released_at_once(group) -> None:  # an aborted request's draft blocks go at once
        assert group.spec is None or group.spec.proposer_state is None

    outputs = run_engine(engine, requests, check, abort_after, released_at_once)
    _assert_draft_cache_empty(engine)
    return outputs


def _proposer(engine: LLMEngine) -> DraftProposer:
    return engine.speculator.proposer


def _assert_draft_cache_empty(engine: LLMEngine) -> None:
    if engine.speculator is None:
        return
    bm = _proposer(engine).block_manager
    assert bm.device.num_used == 0 and not bm.block_tables and all(c == 0 for c in bm.device.ref_counts)


def _check_draft_tables(engine: LLMEngine) -> None:
    """After every step: each block of the draft cache is held by exactly one live draft sequence,
    and a preempted or waiting request holds none."""
    bm = _proposer(engine).block_manager
    held = [b for table in bm.block_tables.values() for b in table]
    assert len(held) == len(set(held)) == bm.device.num_used
    live = [g.spec.proposer_state for g in engine.scheduler.running if g.spec and g.spec.proposer_state]
    assert {s.seq_id for s in live} == set(bm.block_tables)
    for group in (*engine.scheduler.waiting, *engine.scheduler.swapped):
        assert group.spec is None or group.spec.proposer_state is None


GREEDY = REQUESTS[:4]


def _greedy_outputs(plain: dict[str, list[int]]) -> dict[str, list[int]]:
    return {f"r{i}": plain[f"r{i}"] for i in range(len(GREEDY))}


@pytest.fixture(scope="module")
def target(tmp_path_factory, smollm2_path):
    # 1,024 of SmolLM2's ids: a full vocabulary's lm_head and sampling would be most of the time here
    return make_tiny_llama(tmp_path_factory.mktemp("target"), smollm2_path, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def plain(target):
    return _run(_engine(target))


@pytest.fixture(scope="module")
def noisy_draft(tmp_path_factory, target):
    """The target with noise on its lm_head: its guesses are right often, not always."""
    path = tmp_path_factory.mktemp("noisy-draft")
    for f in target.iterdir():
        shutil.copy(f, path / f.name)
    weights = load_file(str(path / "model.safetensors"))
    gen = torch.Generator().manual_seed(5)
    head = weights["lm_head.weight"]
    weights["lm_head.weight"] = head + 0.6 * head.std() * torch.randn(head.shape, generator=gen)
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def small_draft(tmp_path_factory, smollm2_path):
    return make_tiny_llama(tmp_path_factory.mktemp("small-draft"), smollm2_path, seed=3, vocab_size=VOCAB,
                           num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_key_value_heads=1)


@pytest.fixture(scope="module")
def self_drafted(target):
    return _engine(target, target)


def test_target_as_its_own_draft_is_always_right(self_drafted, plain):
    engine = self_drafted
    assert _run(engine, GREEDY, _check_draft_tables) == _greedy_outputs(plain)  # a seeded draw is a guess's by chance
    s = engine.stats()
    assert s.spec_acceptance_rate == 1.0 and s.spec_accepted_tokens_total > 30
    # one draft forward per draft position serves every speculating sequence of the step
    assert _proposer(engine).num_forwards < s.spec_draft_tokens_total / 2


def test_health_names_the_draft(self_drafted, target):
    from types import SimpleNamespace

    from livecast.services.llm.service import LLMService

    engine = self_drafted
    service = SimpleNamespace(engine=SimpleNamespace(stats=engine.stats, engine=engine, errored=False),
                              model_name="tiny", max_model_len=engine.max_model_len)
    assert LLMService.health(service)["speculative"] == f"draft ({target})"


def test_stateless_proposals_and_long_catch_ups(self_drafted, plain):
    """`propose` without a SpecState keeps nothing; a catch-up cut into pieces guesses the same."""
    proposer = _proposer(self_drafted)
    prompt = REQUESTS[0][0]
    assert proposer.propose(prompt, 4) == plain["r0"][:4]
    proposer.max_chunk_tokens = 7
    try:
        assert proposer.propose(prompt + plain["r0"][:3], 5) == plain["r0"][3:8]
    finally:
        proposer.max_chunk_tokens = 1024
    _assert_draft_cache_empty(self_drafted)
    assert proposer.propose([], 3) == [] and proposer.propose(prompt, 0) == []


def test_a_different_draft_changes_no_token(small_draft, plain, target):
    engine = _engine(target, small_draft)
    assert _run(engine, check=_check_draft_tables) == plain
    assert engine.speculator.num_draft_tokens > 0


def test_rollback_to_the_targets_accepted_tokens(noisy_draft, plain, target):
    """After each step the draft's computed tokens, rolled back as its next proposal will, are the
    target's tokens up to the first rejected guess, and its blocks past them are free."""
    engine = _engine(target, noisy_draft)
    proposer, bm = _proposer(engine), _proposer(engine).block_manager
    caught_up = []

    def check(engine):
        _check_draft_tables(engine)
        for group in engine.scheduler.running:
            draft = group.spec and group.spec.proposer_state
            if not isinstance(draft, Sequence):
                continue
            seq = group.seqs[0]
            proposer.rollback(group.spec, seq.token_ids)
            n = draft.num_computed_tokens
            assert draft.token_ids == seq.token_ids[:n] and n < len(seq.token_ids)
            assert len(bm.block_tables[draft.seq_id]) == -(-n // bm.block_size)
            caught_up.append(len(seq.token_ids) - n)

    assert _run(engine, GREEDY, check) == _greedy_outputs(plain)
    spec = engine.speculator
    assert 0 < spec.num_accepted_tokens < spec.num_draft_tokens  # accepted and rejected guesses
    # right after a verification the draft is 1 token behind (a guess rejected: the target's own
    # token replaces it) or 2 (all accepted: the last guess and the bonus token are new to it)
    assert caught_up.count(1) > 5 and set(caught_up) >= {1, 2}


@pytest.mark.parametrize("mode", ["swap", "recompute"])
def test_preemption_and_abort_leak_no_draft_block(plain, target, mode):
    # 10 target blocks of 8 tokens (4 KiB each) for 3 requests of 60, 33 and 9 tokens (and r1,
    # aborted mid-generation): preemptions while they draft
    engine = _engine(target, target, kv_cache_memory=10 * 4096, preemption_mode=mode,
                     swap_space=0.0 if mode == "recompute" else 1.0)
    out = _run(engine, GREEDY, _check_draft_tables, abort_after={"r1": 3})
    assert engine.scheduler.num_preemptions > 0 and engine.speculator.num_accepted_tokens > 0
    expected = _greedy_outputs(plain)
    assert len(out["r1"]) < len(expected["r1"]) and out["r1"] == expected["r1"][:len(out["r1"])]
    assert {k: v for k, v in out.items() if k != "r1"} == {k: v for k, v in expected.items() if k != "r1"}


def test_a_full_draft_cache_only_drafts_less(plain, target, small_draft):
    # 3 draft blocks (1 layer, 1 KV head of 16, 8 tokens, float32: 1 KiB each) for prompts of up
    # to 40 tokens: the longest never draft, the others take turns
    engine = _engine(target, small_draft, draft_kv_cache_memory=3 * 1024)
    assert _proposer(engine).block_manager.device.num_blocks == 3
    assert _run(engine, GREEDY, _check_draft_tables) == _greedy_outputs(plain)
    assert _proposer(engine).num_fallbacks > 0 and engine.speculator.num_draft_tokens > 0


def test_config_and_vocabulary_checks(tmp_path, target, smollm2_path):
    with pytest.raises(ValueError, match="--draft-model"):
        EngineConfig(speculative="draft")
    with pytest.raises(ValueError, match="only used with --speculative draft"):
        EngineConfig(speculative="ngram", draft_model=str(target))
    assert EngineConfig(speculative="draft", draft_model="x", draft_kv_cache_memory=1 << 20).draft_kv_cache_memory
    other_vocab = make_tiny_llama(tmp_path / "v256", smollm2_path, vocab_size=256, num_hidden_layers=1)
    with pytest.raises(ValueError, match=f"draft model '{other_vocab}'.*vocab_size 256.*target model '{target}'"):
        _engine(target, other_vocab)
    from livecast.engine.embedder import default_embedding_path

    other_tokenizer = make_tiny_llama(tmp_path / "bert", default_embedding_path(), vocab_size=VOCAB,
                                      num_hidden_layers=1)
    with pytest.raises(ValueError, match=f"draft model '{other_tokenizer}' and target model '{target}' tokenize"):
        _engine(target, other_tokenizer)


def test_speculator_asks_each_request_for_its_own_k_at_once():
    from livecast.engine.spec import SpecState, Speculator

    class OneByOne:  # no propose_many: asked once per request
        asked: list = []

        def propose(self, token_ids, k, state=None):
            self.asked.append((token_ids[0], k))
            return list(range(k))

    class Batched(OneByOne):
        def propose_many(self, requests):
            self.asked.append([(ids[0], k) for _, ids, k in requests])
            return [list(range(k)) for _, _, k in requests]

    fresh, shrunk, paused = SpecState(), SpecState(acceptance=0.4), SpecState(paused_steps=2)
    for proposer, asked in ((OneByOne(), [(1, 4), (2, 2)]), (Batched(), [[(1, 4), (2, 2)]])):
        proposer.asked = []
        spec = Speculator(proposer, num_speculative_tokens=4)
        drafts = spec.propose_many([(fresh, [1], 9), (shrunk, [2], 9), (paused, [3], 9), (SpecState(), [4], 0)])
        assert drafts == [[0, 1, 2, 3], [0, 1], [], []] and proposer.asked == asked


def test_a_failing_draft_forward_costs_drafts_not_the_step(plain, target, small_draft):
    """The draft's forward raising mid-proposal: the step drafts nothing, the draft's blocks are
    released, every request finishes with the tokens it has without speculation."""
    engine = _engine(target, small_draft)
    proposer = _proposer(engine)
    forward, calls = proposer.runner.forward, []

    def flaky(batch):
        calls.append(1)
        if len(calls) % 3 == 0:
            raise RuntimeError("draft forward failed")
        return forward(batch)

    proposer.runner.forward = flaky
    assert _run(engine, GREEDY, _check_draft_tables) == _greedy_outputs(plain)
    assert engine.speculator.num_proposer_errors > 0
    _assert_draft_cache_empty(engine)
