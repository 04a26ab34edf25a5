"""CoT through the real engine (tiny random Llama): shared KV blocks, run_cot, prefix cache, the CLIs."""
import asyncio
import json

import pytest

from livecast.engine import EngineConfig, LLMEngine, SamplingParams
from livecast.services.llm.cot.answers import majority_vote
from livecast.services.llm.cot.offline.dataset import SHIPPED_FEWSHOT
from livecast.services.llm.cot.demos import load_demo_set
from livecast.services.llm.cot.prompts import build_prompt
from livecast.services.llm.cot.runner import EngineDriver, run_cot
from livecast.services.llm.cot.offline.selfconsistency import measure_kv_sharing
from livecast.services.llm.cot.spec import CotError, CotSpec

QUESTION = "A baker made 24 muffins and sold 15. How many muffins are left?"


@pytest.fixture(scope="module")
def engine(tiny_llama_path):
    return LLMEngine(EngineConfig(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=16 << 20,
                                  max_model_len=1024))


def test_self_consistency_chains_share_prompt_blocks(engine):
    demos = load_demo_set(SHIPPED_FEWSHOT).demos[:2]
    prompt = build_prompt(CotSpec("self_consistency", demos, 4), QUESTION, demos)
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=16, ignore_eos=True)
    out, kv = measure_kv_sharing(engine, prompt, params)
    assert kv.prompt_tokens > 4 * engine.block_size
    assert len(out.outputs) == 4 and all(len(o.token_ids) == 16 for o in out.outputs)
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1  # sampled chains differ
    bs, p = engine.block_size, kv.prompt_tokens
    full_prompt_blocks = p // bs
    # one copy of the full prompt blocks; each chain owns its tail (copied last block + 16 tokens)
    assert kv.shared_blocks <= full_prompt_blocks + 4 * (-(-(p % bs + 16) // bs))
    assert kv.separate_blocks >= 4 * (-(-(p + 15) // bs))
    assert kv.shared_blocks < kv.separate_blocks and kv.saved_pct > 40
    with pytest.raises(ValueError, match="needs n >= 2"):
        measure_kv_sharing(engine, prompt, SamplingParams(max_tokens=4))


def test_run_cot_self_consistency_through_engine(engine):
    driver = EngineDriver(engine)
    spec = CotSpec.from_request({"mode": "self_consistency", "n": 3})
    params = SamplingParams(temperature=1.0, seed=7, max_tokens=24)
    result, = asyncio.run(driver.run([run_cot(driver.generate, spec, QUESTION, [], params)]))
    assert len(result.chains) == 3
    answers = [c.answer for c in result.chains]
    assert (result.answer, sum(result.votes.values())) == (majority_vote(answers)[0],
                                                            sum(a is not None for a in answers))
    # zero-shot chains also ran Kojima's answer stage: more tokens than the rationales alone
    assert result.num_output_tokens > sum(len(c.rationale) > 0 for c in result.chains)
    assert result.prompt.endswith("A: Let's think step by step.")
    with pytest.raises(CotError, match="needs temperature > 0"):
        asyncio.run(driver.run([run_cot(driver.generate, spec, QUESTION, [], SamplingParams(temperature=0.0))]))


def test_same_demos_hit_the_prefix_cache(engine):
    demos = load_demo_set(SHIPPED_FEWSHOT).demos
    spec = CotSpec("few_shot", demos)
    driver = EngineDriver(engine)
    params = SamplingParams(temperature=0.0, max_tokens=8)
    asyncio.run(driver.run([run_cot(driver.generate, spec, QUESTION, demos, params)]))
    hits = engine.block_manager.prefix_hits
    asyncio.run(driver.run([run_cot(driver.generate, spec, "Tom has 3 pens and buys 4. How many pens?",
                                    demos, params)]))
    demo_tokens = len(engine.tokenize(build_prompt(spec, "x", demos)))
    assert engine.block_manager.prefix_hits - hits >= demo_tokens // engine.block_size - 1


def test_cot_build_cli_end_to_end(tiny_llama_path, tmp_path, capsys):
    pytest.importorskip("sklearn")
    from livecast.services.llm.cot.offline import cli

    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"question": f"Sam has {i} apples and buys {i + 2} more. How many?"})
                                 + "\n" for i in range(6)))
    out = tmp_path / "demos.json"
    code = cli.main(["cot", "build", "--questions", str(questions), "--out", str(out), "--clusters", "2",
                     "--model", str(tiny_llama_path), "--max-tokens", "8", "--max-steps", "50",
                     "--no-answer-check", "--quiet"])
    err = capsys.readouterr().err
    # the random model's rationales never end in a full stop: the whole path (model, MiniLM
    # embeddings, k-means, two batched calls, selection) ran over every candidate and said why
    assert code == 1 and not out.exists()
    assert "no candidate in any of the 2 clusters passed the heuristics" in err
    assert "6 candidates rejected (6 × rationale does not end with a full stop" in err


def test_real_embeddings_cluster_by_topic():
    from livecast.services.llm.cot.offline.autocot import cluster, minilm_embed

    topics = [["How many apples does Sam have after buying 3 more apples?",
               "Mia picks 12 apples and eats 2 apples. How many apples are left?",
               "There are 5 apple trees with 20 apples each. How many apples are there?"],
              ["A train travels 60 kilometers per hour for 3 hours. How far does it go?",
               "A car drives 150 kilometers in 2 hours. What is its speed?",
               "A cyclist rides 18 kilometers each hour for 5 hours. How far does she ride?"]]
    embeddings = minilm_embed()([q for qs in topics for q in qs])
    assert embeddings.shape == (6, 384)
    labels, _ = cluster(embeddings, 2, seed=0)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]


def test_cot_build_cli_bad_input(tmp_path, capsys):
    from livecast.services.llm.cot.offline import cli

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert cli.main(["build", "--questions", str(empty), "--out", str(tmp_path / "o.json")]) == 2
    assert "has no questions" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\nnot json\n')
    assert cli.main(["build", "--questions", str(bad), "--out", str(tmp_path / "o.json")]) == 2
    assert ":2: not valid JSON" in capsys.readouterr().err
    assert cli.main(["build", "--questions", str(bad), "--out", str(tmp_path / "o.json"), "--clusters", "8"]) == 2


def test_bench_cot_bad_input(tmp_path, capsys):
    from livecast.services.bench import cot

    assert cot.main(["--dataset", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cot.main(["--dataset", str(SHIPPED_FEWSHOT), "--modes", "zero_shot,telepathy"]) == 2
    assert "unknown mode(s) telepathy" in capsys.readouterr().err
    assert cot.main(["--dataset", str(SHIPPED_FEWSHOT), "--n", "0"]) == 2
    assert "--n must be in [1, 64]" in capsys.readouterr().err
