"""The `suffix` proposer (SuffixDecoding): the trie's counts against a brute force (growing, across
sources, after evictions), the drafts it picks, its bounds, that a request's tree goes with the
request, and the engine's tokens unchanged with it while drafts from earlier requests are accepted."""
from __future__ import annotations

import gc
import random
import weakref
from collections import Counter

import pytest

from livecast.engine import SamplingParams
from livecast.engine.spec import SpecState, make_proposer
from livecast.engine.spec.suffix import RequestTree, SuffixProposer
from livecast.engine.spec.suffix_tree import Source, SuffixTree
from livecast.kernels import native
from tests.engine.test_speculative import (
    REPETITIVE,
    _check_tables,
    _engine,
    _greedy,
    _run,
)


# -- the trie ------------------------------------------------------------------------------------
def _brute(token_lists: list[list[int]], max_depth: int) -> Counter:
    counts = Counter()
    for tokens in token_lists:
        for j in range(len(tokens)):
            for d in range(1, min(max_depth, len(tokens) - j) + 1):
                counts[tuple(tokens[j:j + d])] += 1
    return counts


def _trie_counts(tree: SuffixTree) -> tuple[Counter, int]:
    """Each path prefix's count read off the trie (lazy chains unrolled to max_depth), and the nodes."""
    counts, num_nodes, stack = Counter(), 0, [(tree.root, ())]
    while stack:
        node, prefix = stack.pop()
        num_nodes += 1
        if prefix:
            counts[prefix] += node.count
        if node.children is None:
            assert node.count == 1
            pos = node.pos
            while pos < node.source.num_indexed and len(prefix) < tree.max_depth:
                prefix += (node.source.tokens[pos],)
                counts[prefix] += 1
                pos += 1
        else:
            stack += [(child, prefix + (token,)) for token, child in node.children.items()]
    return counts, num_nodes


def test_trie_counts_match_brute_force_while_growing_and_after_removal():
    rng = random.Random(0)
    for _ in range(200):
        depth = rng.randint(2, 7)
        tree, kept = SuffixTree(depth), []
        for _ in range(rng.randint(1, 4)):
            vocab = rng.randint(1, 4)  # small vocabularies repeat, so lazy nodes expand often
            tokens, source = [rng.randint(0, vocab) for _ in range(rng.randint(0, 30))], Source()
            for start in range(0, len(tokens), 3):
                tree.extend(source, tokens[start:start + 3])
                counts, num_nodes = _trie_counts(tree)
                assert counts == _brute([t for _, t in kept] + [tokens[:start + 3]], depth)
            tree.close(source)
            kept.append((source, tokens))
            if rng.random() < 0.4:
                gone = kept.pop(rng.randrange(len(kept)))
                tree.remove(gone[0])
        counts, num_nodes = _trie_counts(tree)
        assert +counts == _brute([t for _, t in kept], depth)
        assert num_nodes == tree.num_nodes and tree.root.count == sum(len(t) for _, t in kept)
    for source, _ in kept:
        tree.remove(source)
    assert tree.num_nodes == 1 and not tree.root.children and tree.root.count == 0


def test_plain_text_costs_a_few_nodes_per_token():
    rng = random.Random(1)
    tree = SuffixTree(24)
    tree.extend(Source(), [rng.randrange(50_000) for _ in range(4000)])
    assert tree.num_nodes < 2 * 4000  # a full depth-24 trie would hold ~96,000


# -- drafts --------------------------------------------------------------------------------------
def test_proposes_what_followed_a_repeated_pattern_and_grows_incrementally():
    p, state = SuffixProposer(), SpecState()
    tokens = list(range(10, 20)) * 2 + [10, 11, 12]
    assert p.propose(tokens, 4, state) == [13, 14, 15, 16]
    tree = state.proposer_state
    assert isinstance(tree, RequestTree) and tree.source.num_indexed == len(tokens)
    tokens += [13, 14]
    assert p.propose(tokens, 4, state) == [15, 16, 17, 18]
    assert state.proposer_state is tree and tree.source.num_indexed == len(tokens)  # extended, not rebuilt
    assert p.propose([1, 2, 3, 4, 5], 4, SpecState()) == []  # nothing repeats
    assert p.propose(tokens, 0, state) == []


def test_picks_the_most_frequent_branch():
    p = SuffixProposer(min_token_prob=0.0, max_spec_factor=4.0)
    three_c = [7, 1, 2, 3, 7, 1, 2, 3, 7, 1, 2, 4, 7, 1, 2, 3, 7, 1, 2]
    assert p.propose(three_c, 1, SpecState()) == [3]
    three_d = [7, 1, 2, 4, 7, 1, 2, 4, 7, 1, 2, 3, 7, 1, 2, 4, 7, 1, 2]
    assert p.propose(three_d, 1, SpecState()) == [4]


def test_min_token_prob_cuts_the_draft():
    # after 9: five continuations once each, then (after 9 5) always 6
    tokens = [9, 1, 0, 9, 2, 0, 9, 3, 0, 9, 4, 0, 9, 5, 6, 9]
    assert SuffixProposer(min_token_prob=0.25).propose(tokens, 3, SpecState()) == []  # each is 1/5
    assert SuffixProposer(min_token_prob=0.15).propose(tokens, 1, SpecState()) == [1]  # the first of the ties
    # the path's probability is a product: after (9 5): 6 always, then 0, 1 or 2 (1/3 each); past a
    # token seen once the draft reads on where that one occurrence went (9)
    tokens = [9, 5, 6, 0, 9, 5, 6, 1, 9, 5, 6, 2, 9, 5]
    assert SuffixProposer(min_token_prob=0.4, max_spec_factor=3.0).propose(tokens, 3, SpecState()) == [6]
    assert SuffixProposer(min_token_prob=0.3, max_spec_factor=3.0).propose(tokens, 3, SpecState()) == [6, 0, 9]


def test_depth_cap_bounds_the_match_and_the_trie():
    tokens = list(range(30, 40)) * 3
    # the match is at most max_tree_depth - k tokens, and the draft at most max_spec_factor x the match
    assert SuffixProposer(max_tree_depth=6).propose(tokens, 4, SpecState()) == [30, 31]
    assert SuffixProposer(max_tree_depth=6).propose(tokens, 5, SpecState()) == [30]
    assert SuffixProposer(max_tree_depth=6).propose(tokens, 8, SpecState()) == [30]  # a match of 1 at least
    tree = SuffixTree(3)
    tree.extend(Source(), tokens)
    stack, deepest = [(tree.root, 0)], 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack += [(child, depth + 1) for child in (node.children or {}).values()]
    assert deepest == 3


def test_global_tree_drafts_a_finished_requests_output_in_a_fresh_request():
    p = SuffixProposer()
    template_end = [500, 501, 502]  # "<|im_start|>assistant\n"
    answer = [800, 801, 802, 803, 804, 805, 806, 807]
    fresh = [1, 2, 3] + template_end
    assert p.propose(fresh, 4, SpecState()) == []
    p.request_finished([40, 41] + template_end, answer)
    assert p.propose(fresh, 3, SpecState()) == answer[:3]  # the reply's start, from the prompt's end
    assert p.propose(fresh + answer[:4], 4, SpecState()) == answer[4:8]


def test_global_tree_evicts_the_oldest_within_its_bounds():
    p = SuffixProposer(max_cached_requests=2, max_cached_tokens=100, prompt_context_tokens=0)
    outputs = [[1000 * i + t for t in range(20)] for i in range(1, 4)]
    for out in outputs:
        p.request_finished([], out)
    assert len(p.cached) == 2 and p.num_cached_tokens == 40
    assert p.propose(outputs[0][:5], 4, SpecState()) == []  # forgotten
    assert p.propose(outputs[2][:5], 4, SpecState()) == outputs[2][5:9]
    fresh = SuffixTree(p.max_tree_depth)
    for out in outputs[1:]:
        fresh.extend(Source(), out)
    assert p.global_tree.num_nodes == fresh.num_nodes  # nothing of the evicted one is left
    p.request_finished([], list(range(90_000, 90_090)))  # 90 tokens: the cap leaves room for it alone
    assert len(p.cached) == 1 and p.num_cached_tokens == 90
    p.request_finished([], list(range(200)))  # longer than the cap: its last 100 tokens
    assert p.num_cached_tokens == 100 and p.global_tree.root.count == 100


def test_make_proposer_and_config_accept_suffix():
    from livecast.engine import EngineConfig

    assert isinstance(make_proposer("suffix"), SuffixProposer)
    assert EngineConfig(speculative="suffix").speculative == "suffix"
    with pytest.raises(ValueError, match="suffix"):
        EngineConfig(speculative="eagle")
    with pytest.raises(ValueError):
        SuffixProposer(min_token_prob=2.0)


# -- the engine ----------------------------------------------------------------------------------
def _suffix_engine(path, **overrides):
    return _engine(path, "suffix", **overrides)


ROUND = [(REPETITIVE, _greedy(24)), ([300, 301, 302, 303, 304], _greedy(20)), ([40, 41, 42] * 7, _greedy(17)),
         ([900, 901, 902], _greedy(9, speculative=False))]


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_greedy_tokens_identical_and_repeats_drafted_from_earlier_requests(tiny_llama_path):
    plain = _run(_engine(tiny_llama_path, False), ROUND)
    engine = _suffix_engine(tiny_llama_path)
    first = _run(engine, ROUND, _check_tables)
    assert first == plain
    assert len(engine.speculator.proposer.cached) == len(ROUND)  # the opted-out one is learnt too
    before = engine.stats()
    again = _run(engine, ROUND, _check_tables)  # the same requests: the global tree knows the answers
    assert again == plain
    s = engine.stats()
    accepted = s.spec_accepted_tokens_total - before.spec_accepted_tokens_total
    drafts = s.spec_draft_tokens_total - before.spec_draft_tokens_total
    assert accepted > 0.8 * drafts and accepted > 20


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_seeded_samples_identical(tiny_llama_path):
    requests = [(REPETITIVE[i:], SamplingParams(temperature=1.0, seed=7 + i, max_tokens=16, top_k=20, **kw))
                for i, kw in enumerate([{}, dict(repetition_penalty=1.3), dict(min_tokens=10, logprobs=2)])]
    plain = _run(_engine(tiny_llama_path, False), requests)
    engine = _suffix_engine(tiny_llama_path)
    assert _run(engine, requests, _check_tables) == plain
    assert _run(engine, requests, _check_tables) == plain  # same seeds: drafted from the first round
    assert engine.speculator.num_accepted_tokens > 0


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_request_trees_go_with_finished_and_aborted_requests(tiny_llama_path):
    engine = _suffix_engine(tiny_llama_path)
    for i in range(3):
        engine.add_request(f"r{i}", REPETITIVE[i:], _greedy(12))
    trees = {}
    for _ in range(3):
        engine.step()
    for request_id, group in engine.requests.items():
        assert isinstance(group.spec.proposer_state, RequestTree)
        trees[request_id] = weakref.ref(group.spec.proposer_state)
    engine.abort_request("r1")
    while engine.has_unfinished_requests():
        engine.step()
    del group
    gc.collect()
    assert all(ref() is None for ref in trees.values())
    assert len(engine.speculator.proposer.cached) == 2  # the aborted request's partial output is not learnt


@pytest.mark.skipif(not native.available(), reason="identical logits need the deterministic numerics")
def test_preemption_with_request_trees(tiny_llama_path):
    """A KV cache too small for the batch (recompute): preempted requests keep their trees, which
    index the same tokens again when they come back; the second round drafts from the first."""
    requests = [(REPETITIVE[i:i + 20], _greedy(30)) for i in range(4)]
    config = dict(kv_cache_memory=24 * 4096, preemption_mode="recompute", swap_space=0.0)
    plain = _run(_engine(tiny_llama_path, False, **config), requests)
    engine = _suffix_engine(tiny_llama_path, **config)
    assert _run(engine, requests, _check_tables) == plain
    assert _run(engine, requests, _check_tables) == plain
    assert engine.scheduler.num_preemptions > 0 and engine.speculator.num_accepted_tokens > 0
