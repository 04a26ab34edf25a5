"""Sampling behaviour on a tiny random Llama: seeds, n/best_of with shared blocks, beam search
against HF, stops, logprobs against HF, penalties, min_tokens, and UTF-8-safe deltas."""
from __future__ import annotations

import pytest
import torch

from livecast.engine import LLM, SamplingParams

PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def llm(tiny_llama_path):
    return LLM(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=32 << 20, block_size=16)


@pytest.fixture(scope="module")
def hf_model(tiny_llama_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()


def no_leak(llm):
    return llm.engine.block_manager.device.num_used == 0


def test_seed_reproducible_whatever_the_batch(llm):
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=20, ignore_eos=True)
    alone = llm.generate([PROMPT], params)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=20 + i, ignore_eos=True) for i in range(5)]
    batch = llm.generate([f"noise {i}" for i in range(5)] + [PROMPT], others + [params])
    assert batch[-1].outputs[0].token_ids == alone
    different = llm.generate([PROMPT], SamplingParams(temperature=1.0, seed=99, max_tokens=20, ignore_eos=True))
    assert different[0].outputs[0].token_ids != alone
    assert no_leak(llm)


def test_parallel_sampling_shares_prompt_blocks(llm):
    prompt = list(range(1000, 1000 + 64))  # 4 full blocks
    params = SamplingParams(n=4, temperature=1.0, seed=7, max_tokens=16, ignore_eos=True)
    engine = llm.engine
    engine.add_request("par", prompt, params)
    peak = 0
    while engine.has_unfinished_requests():
        outs = engine.step()
        peak = max(peak, engine.block_manager.device.num_used)
    out = outs[-1]
    assert len(out.outputs) == 4
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    # 4 shared prompt blocks + one block of output per sample, not 4 x (4 + 1)
    assert peak == 4 + 4
    assert no_leak(llm)


def test_best_of_returns_n_highest_cumulative_logprob(llm):
    out = llm.generate([PROMPT], SamplingParams(n=2, best_of=5, temperature=1.0, seed=3, max_tokens=8,
                                                ignore_eos=True))[0]
    scores = [o.cumulative_logprob for o in out.outputs]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)


def test_beam_search_matches_hf(llm, hf_model):
    ids = llm.tokenizer.encode(PROMPT)
    width, steps = 3, 8
    ours = llm.beam_search([ids], beam_width=width, max_tokens=steps, ignore_eos=True)[0]
    x = torch.tensor([ids])
    hf = hf_model.generate(x, attention_mask=torch.ones_like(x), num_beams=width, num_return_sequences=width,
                           do_sample=False, max_new_tokens=steps, early_stopping=False, length_penalty=1.0,
                           eos_token_id=None, pad_token_id=0)
    assert [o.token_ids for o in ours.outputs] == [row[len(ids):].tolist() for row in hf]
    assert no_leak(llm)


def test_beam_search_shares_blocks(llm):
    engine = llm.engine
    from livecast.engine import BeamSearchParams
    engine.add_request("beam", list(range(2000, 2040)), BeamSearchParams(beam_width=4, max_tokens=6, ignore_eos=True))
    engine.step()  # prefill: one sequence
    engine.step()  # first decode after forking into 4 beams
    group = engine.requests["beam"]
    tables = [engine.block_manager.block_tables[s.seq_id] for s in group.seqs]
    assert len(tables) == 4
    assert all(t[:2] == tables[0][:2] for t in tables)  # two full prompt blocks shared by every beam
    assert engine.block_manager.device.ref_counts[tables[0][0]] == 4
    while engine.has_unfinished_requests():
        engine.step()
    assert no_leak(llm)


def test_logprobs_match_hf(llm, hf_model):
    ids = llm.tokenizer.encode(PROMPT)
    out = llm.generate([ids], SamplingParams(temperature=0, max_tokens=5, logprobs=3, prompt_logprobs=2,
                                             ignore_eos=True))[0]
    full = ids + out.outputs[0].token_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf_model(torch.tensor([full])).logits[0].float(), dim=-1)
    for i, (token, entry) in enumerate(zip(out.outputs[0].token_ids, out.outputs[0].logprobs)):
        row = ref[len(ids) - 1 + i]
        assert list(entry)[0] == token
        assert entry[token] == pytest.approx(row[token].item(), abs=1e-4)
        top = row.topk(3).indices.tolist()
        assert set(top) <= set(entry)
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(ids)
    for p in range(1, len(ids)):
        assert out.prompt_logprobs[p][ids[p]] == pytest.approx(ref[p - 1, ids[p]].item(), abs=1e-4)


def test_stop_strings_cut_text_and_stop_token_ids(llm):
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    full = llm.generate([PROMPT], params)[0].outputs[0]
    stop = full.text[8:11]
    assert stop and stop not in full.text[:8]
    cut = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop]))[0]
    assert cut.outputs[0].text == full.text[:full.text.index(stop)]
    assert cut.outputs[0].finish_reason == "stop" and cut.outputs[0].stop_reason == stop
    kept = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop],
                                                 include_stop_str_in_output=True))[0]
    assert kept.outputs[0].text.endswith(stop)
    tok = full.token_ids[4]
    by_id = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=30, ignore_eos=True,
                                                  stop_token_ids=[tok]))[0].outputs[0]
    assert by_id.token_ids == full.token_ids[:full.token_ids.index(tok) + 1]
    assert by_id.stop_reason == tok
    assert no_leak(llm)


def test_min_tokens_and_eos(llm):
    eos = next(iter(llm.engine.eos_token_ids))
    out = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=12, min_tokens=12,
                                                stop_token_ids=list(range(0, 49152, 7))))[0].outputs[0]
    assert len(out.token_ids) == 12 and eos not in out.token_ids


def test_penalties_follow_vllm_semantics():
    from livecast.engine.sampler import SamplingRow, apply_penalties

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 1.0]])
    # prompt [0], outputs [3, 3, 1]
    params = SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    row = SamplingRow(params, [0, 3, 3, 1], 1, None, [])
    out = apply_penalties(logits.clone(), [row])[0].tolist()
    # repetition divides positive / multiplies negative logits of every seen token (prompt too);
    # frequency subtracts per occurrence in the output, presence once per distinct output token
    expected = [2.0 / 2, -1.0 * 2 - 0.5 - 0.25, 0.5, 3.0 / 2 - 2 * 0.5 - 0.25, 1.0]
    assert out == pytest.approx(expected)
    neutral = SamplingRow(SamplingParams(), [0, 3, 3, 1], 1, None, [])
    assert apply_penalties(logits.clone(), [neutral])[0].tolist() == pytest.approx(logits[0].tolist())


def test_repetition_penalty_changes_generation(llm):
    prompt = "the the the the the the the the"
    base = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    rep = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True,
                                                repetition_penalty=1e6))[0].outputs[0]
    prompt_ids = set(llm.tokenizer.encode(prompt))
    # with an overwhelming penalty no seen token can win while unseen ones remain
    assert len(set(rep.token_ids)) == len(rep.token_ids)
    assert not prompt_ids & set(rep.token_ids)
    assert rep.token_ids != base.token_ids or not prompt_ids & set(base.token_ids)


def test_top_k_1_is_greedy_and_top_p_tiny_is_greedy(llm):
    greedy = llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0]
    k1 = llm.generate([PROMPT], SamplingParams(temperature=1.5, top_k=1, seed=1, max_tokens=10, ignore_eos=True))[0]
    p0 = llm.generate([PROMPT], SamplingParams(temperature=1.5, top_p=1e-6, seed=1, max_tokens=10,
                                               ignore_eos=True))[0]
    minp = llm.generate([PROMPT], SamplingParams(temperature=1.5, min_p=1.0, seed=1, max_tokens=10,
                                                 ignore_eos=True))[0]
    assert k1.outputs[0].token_ids == greedy.outputs[0].token_ids
    assert p0.outputs[0].token_ids == greedy.outputs[0].token_ids
    assert minp.outputs[0].token_ids == greedy.outputs[0].token_ids


def test_utf8_deltas_never_split_and_concatenate_to_text(llm):
    # byte-level BPE: an emoji spans several tokens; force them as the "prompt" of a generation
    tok = llm.tokenizer
    emoji_ids = tok.encode("你好🙂🐱 世界")
    engine = llm.engine
    from livecast.engine.detokenizer import Detokenizer
    from livecast.engine.sequence import Sequence
    seq = Sequence(999, [1, 2], 2)
    det = Detokenizer(tok)
    det.start(seq)
    deltas = []
    for t in emoji_ids:
        seq.token_ids.append(t)
        deltas.append(det.step(seq, skip_special_tokens=True))
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(emoji_ids) == seq.text
    assert len(emoji_ids) > len(seq.text.replace(" ", "")) - 2  # really multi-token characters
    # and through the engine: streamed deltas add up to the final text
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=40, ignore_eos=True)
    engine.add_request("utf8", "中文🙂", params)
    pieces, last = [], ""
    while engine.has_unfinished_requests():
        for out in engine.step():
            text = out.outputs[0].text
            assert text.startswith(last)
            pieces.append(text[len(last):])
            last = text
    assert "".join(pieces) == out.outputs[0].text == tok.decode(out.outputs[0].token_ids, skip_special_tokens=True)


def test_draws_follow_the_distribution_and_never_pick_masked_tokens():
    from livecast.engine.sampler import SamplingRow, sample

    target = torch.tensor([0.5, 0.0, 0.25, 0.125, 0.0, 0.125])
    logits = target.log().expand(20000, -1).contiguous()  # log(0) = -inf: masked
    rows = [SamplingRow(SamplingParams(temperature=1.0), [1], 1, None, []) for _ in range(20000)]
    counts = torch.bincount(torch.tensor(sample(logits, rows).token_ids), minlength=6).float()
    assert counts[1] == 0 and counts[4] == 0
    sigma = (20000 * target * (1 - target)).sqrt()
    assert torch.all((counts - 20000 * target).abs() <= 4 * sigma + 1e-6), counts
    # a seeded row draws the same token whatever else is in the batch
    seeded = lambda: SamplingRow(SamplingParams(temperature=1.0, seed=7), [1], 1,  # noqa: E731
                                 torch.Generator().manual_seed(7), [])
    alone = sample(logits[:1], [seeded()]).token_ids
    crowd = sample(logits[:5], [rows[0], rows[1], seeded(), rows[2], rows[3]]).token_ids
    assert crowd[2] == alone[0]
