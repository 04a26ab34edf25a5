"""The `cot` extension field on /v1/chat/completions and /v1/completions, through the official
openai client against the real app (tiny random Llama, demo set "arith" loaded at startup)."""
from __future__ import annotations

import asyncio
import dataclasses

import openai
import pytest
from prometheus_client import CollectorRegistry

from livecast.engine import EngineConfig
from livecast.services.llm.config import LLMConfig
from livecast.services.llm.cot import CotSpec, build_prompt, load_demo_set, split_rationale_answer
from livecast.services.llm.cot.offline.dataset import SHIPPED_FEWSHOT
from livecast.services.llm.cot.serving import RationaleStream
from livecast.services.llm.service import llm_service
from tests.services.conftest import running_server, tiny_settings

QUESTION = "A baker made 24 muffins and sold 15. How many muffins are left?"
FEW_SHOT = {"mode": "few_shot", "demos": "arith"}
# digits and spaces only: every chain holds numbers, so every chain votes
DIGITS_BIAS = {str(t): 100 for t in (32, 33, 34, 35, 216)}


@pytest.fixture(scope="module")
def server(tiny_llama_path):
    settings = tiny_settings(tiny_llama_path)
    settings = dataclasses.replace(settings, llm=LLMConfig(served_model_name="tiny",
                                                           cot_demos=f"arith={SHIPPED_FEWSHOT}"))
    with running_server(settings) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


def chat(client, cot, question=QUESTION, **kwargs):
    kwargs.setdefault("max_tokens", 24)
    return client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                          extra_body={"cot": cot, **kwargs.pop("extra_body", {})}, **kwargs)


@pytest.mark.parametrize("text", [
    "  There are 4 cages, so 4 * 6 = 24.\nA: The answer is 24.",
    "So 6 trees. The answer is 6. Wait, the answer is not obvious. Therefore, the answer is 7",
    "The total is 9 and the final answer: 9\n",
    "Step one.\nStep two has the\nB",
])
def test_streamed_rationale_deltas_add_up_to_the_final_rationale(text):
    spec = CotSpec("few_shot", "arith")
    for step in (1, 2, 5):
        stream = RationaleStream(spec, ["demo"])
        sent = "".join(stream.update(text[:end]) for end in range(step, len(text) + step, step))
        rationale, _ = split_rationale_answer(text, "number")
        assert rationale.startswith(sent)  # nothing sent was ever taken back
        assert sent + stream.finish(rationale) == rationale
    zero_shot = RationaleStream(CotSpec("zero_shot"), [])
    sent = "".join(zero_shot.update(text[:end]) for end in range(1, len(text) + 1))
    assert sent + zero_shot.finish(text.strip()) == text.strip()


def test_few_shot_chat_splits_rationale_and_answer(client, server):
    r = chat(client, FEW_SHOT, extra_body={"ignore_eos": True})
    message = r.choices[0].message
    cot = r.model_extra["cot"]
    assert cot["mode"] == "few_shot" and cot["votes"] == {}
    assert message.content == (cot["answer"] if cot["answer"] is not None else message.reasoning_content)
    assert message.reasoning_content and r.choices[0].finish_reason == "length"
    demos = load_demo_set(SHIPPED_FEWSHOT).demos
    prompt_ids = server.llm.chat_prompt_ids(build_prompt(CotSpec(**FEW_SHOT), QUESTION, demos, chat=True))
    assert r.usage.prompt_tokens == len(prompt_ids)  # the demos were in the prompt, as chat turns
    assert r.usage.completion_tokens == 24
    server.wait_idle()


def test_second_request_with_same_demos_hits_the_prefix_cache(client, server):
    core = server.llm.engine.engine
    chat(client, FEW_SHOT, "Tom has 3 pens and buys 4 more. How many pens does he have?", max_tokens=4)
    hits = core.block_manager.prefix_hits
    r = chat(client, FEW_SHOT, "A jar holds 12 cookies. Ann eats 5. How many are left?", max_tokens=4)
    # every full block of the shared demo turns comes from the cache (the question's do not)
    assert core.block_manager.prefix_hits - hits >= r.usage.prompt_tokens // core.block_size - 2
    assert r.usage.prompt_tokens > 8 * core.block_size
    assert core.stats().prefix_cache_hit_rate > 0


def test_streamed_reasoning_concatenates_to_the_non_streamed_one(client):
    plain = chat(client, FEW_SHOT, temperature=0)
    chunks = list(chat(client, FEW_SHOT, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks if c.choices]
    pieces = [p for p in pieces if p]
    assert len(pieces) > 1  # the rationale was streamed as it was generated, not sent at the end
    assert "".join(pieces) == plain.choices[0].message.reasoning_content
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == plain.choices[0].message.content
    last = [c for c in chunks if c.choices][-1]
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert last.model_extra["cot"] == plain.model_extra["cot"]
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_completions_zero_shot_runs_the_answer_stage(client):
    kwargs = dict(model="tiny", prompt=QUESTION, max_tokens=12, temperature=0,
                  extra_body={"cot": {"mode": "zero_shot"}, "ignore_eos": True})
    r = client.completions.create(**kwargs)
    choice = r.choices[0]
    assert choice.model_extra["cot"]["mode"] == "zero_shot"
    assert choice.text == (choice.model_extra["cot"]["answer"] or choice.model_extra["reasoning_content"])
    # 12 rationale tokens, then Kojima's answer prompt generated at least one more
    assert r.usage.completion_tokens > 12
    stream = list(client.completions.create(stream=True, **kwargs))
    reasoning = "".join(c.choices[0].model_extra["reasoning_content"] for c in stream)
    assert reasoning == choice.model_extra["reasoning_content"]
    assert stream[-1].choices[0].text == choice.text


def test_self_consistency_samples_n_chains_and_votes(client, server):
    r = chat(client, {"mode": "self_consistency", "n": 4, "demos": "arith"}, max_tokens=8, temperature=1.0, seed=5,
             extra_body={"logit_bias": DIGITS_BIAS})
    cot = r.model_extra["cot"]
    votes = cot["votes"]
    assert sum(votes.values()) == 4  # every chain reached an answer and voted once
    assert cot["answer"] == max(votes, key=votes.get) == r.choices[0].message.content
    assert r.usage.completion_tokens == 4 * 8  # n chains of one request, no answer stage with demos
    stream = list(chat(client, {"mode": "self_consistency", "n": 4, "demos": "arith"}, max_tokens=8,
                       temperature=1.0, seed=5, stream=True, extra_body={"logit_bias": DIGITS_BIAS}))
    assert [c for c in stream if c.choices][-1].model_extra["cot"] == cot  # the same seed, the same vote
    server.wait_idle()


def test_a_client_leaving_mid_stream_aborts_the_run(server):
    core = server.llm.engine.engine
    before = core.stats().generation_tokens_total
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 400, "ignore_eos": True,
            "stream": True, "cot": FEW_SHOT}
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if "reasoning_content" in line)
    server.wait_idle(timeout=10)  # no request and no KV block left behind
    assert core.stats().generation_tokens_total - before < 400


@pytest.mark.parametrize("cot, param", [
    ({"mode": "few_shot", "demos": "nope"}, "cot.demos"),
    ({"mode": "self_consistency", "n": 65}, "cot.n"),
    ({"mode": "self_consistency", "n": 0}, "cot.n"),
    ({"mode": "zero_shot", "n": 3}, "cot.n"),
    ({"mode": "think_hard"}, "cot.mode"),
    ({"mode": "zero_shot", "answer_format": "emoji"}, "cot.answer_format"),
])
def test_bad_cot_fields_are_400s_naming_the_field(client, cot, param):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            chat(client, cot, stream=stream)
        assert err.value.param == param and err.value.code == "invalid_cot"
    if param == "cot.demos":
        assert "unknown demo set 'nope'" in err.value.message and "arith" in err.value.message


def test_cot_requests_that_cannot_be_honoured_are_400s(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny", prompt=["one?", "two?"], extra_body={"cot": {"mode": "zero_shot"}})
    assert err.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, {"mode": "zero_shot"}, n=2)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError) as err:  # greedy chains would all be the same
        chat(client, {"mode": "self_consistency", "n": 3}, temperature=0)
    assert err.value.param == "temperature"


def test_a_bad_demo_file_stops_startup(tiny_llama_path, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"demos": []}')

    async def start(cot_demos):
        async with llm_service(EngineConfig(model=str(tiny_llama_path)), LLMConfig(cot_demos=cot_demos),
                               CollectorRegistry()):
            pass

    with pytest.raises(ValueError, match="cannot load --cot-demos: .*must be a non-empty list of demos"):
        asyncio.run(start(f"arith={bad}"))
    with pytest.raises(ValueError, match="cannot load --cot-demos: demo file .*missing.json' does not exist"):
        asyncio.run(start(f"arith={tmp_path / 'missing.json'}"))


# -- Responses ---------------------------------------------------------------------------------
def test_responses_put_the_rationale_in_a_reasoning_item(client):
    kwargs = dict(model="tiny", input=QUESTION, max_output_tokens=24, temperature=0, extra_body={"cot": FEW_SHOT})
    response = client.responses.create(**kwargs)
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and message.type == "message"
    rationale = reasoning.content[0].text
    assert rationale and message.content[0].text
    assert response.model_extra["cot"]["mode"] == "few_shot"
    assert response.usage.output_tokens >= 1 and response.usage.input_tokens > 0
    # streamed: reasoning_text deltas, then the answer; the same object at temperature 0
    deltas, final = [], None
    with client.responses.create(**kwargs, stream=True) as stream:
        for event in stream:
            if event.type == "response.reasoning_text.delta":
                deltas.append(event.delta)
            elif event.type in ("response.completed", "response.incomplete"):  # 24 tokens may cut it short
                final = event.response
    assert final is not None and final.status == response.status
    assert "".join(deltas) == rationale and len(deltas) >= 1
    assert final.output[0].content[0].text == rationale
    assert final.output[1].content[0].text == message.content[0].text
    stored = client.responses.retrieve(response.id)
    assert stored.output[0].type == "reasoning"


def test_responses_refuse_a_bad_cot_field(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="tiny", input=QUESTION, extra_body={"cot": {"mode": "telepathy"}})
    assert err.value.body["param"] == "cot.mode"
