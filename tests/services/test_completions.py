"""/v1/completions, TGI's /generate and /generate_stream, /tokenize and /detokenize."""
from __future__ import annotations

import json
import re

PROMPT = "The quick brown fox"


def test_string_prompt_and_usage(client, http):
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=7, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason == "length" and r.choices[0].text
    count = http.post("/tokenize", json={"prompt": PROMPT}).json()["count"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (count, 7)


def test_default_max_tokens_is_16(client):
    r = client.completions.create(model="tiny", prompt=PROMPT, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16


def test_prompt_list_times_n(client):
    prompts = [PROMPT, "Once upon a time"]
    r = client.completions.create(model="tiny", prompt=prompts, n=2, max_tokens=4, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    singles = [client.completions.create(model="tiny", prompt=p, max_tokens=4, temperature=0).choices[0].text
               for p in prompts]
    assert [c.text for c in r.choices] == [singles[0], singles[0], singles[1], singles[1]]
    assert r.usage.completion_tokens == 16


def test_token_id_prompt_matches_text_prompt(client, http):
    ids = http.post("/tokenize", json={"prompt": PROMPT}).json()["tokens"]
    by_ids = client.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    by_text = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(model="tiny", prompt=[ids, ids[:2]], max_tokens=3, temperature=0)
    assert len(batch.choices) == 2 and batch.usage.prompt_tokens == len(ids) + 2


def test_echo_and_logprobs(client):
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0)
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=5, temperature=0, echo=True, logprobs=2)
    choice = r.choices[0]
    assert choice.text == PROMPT + plain.choices[0].text
    lp = choice.logprobs
    n = r.usage.prompt_tokens + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == choice.text
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing scores the first token
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]
    for i in range(r.usage.prompt_tokens, n):  # greedy: the chosen token is the top one
        assert max(lp.top_logprobs[i].values()) == lp.token_logprobs[i]


def test_streamed_completion_equals_plain(client):
    plain = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, echo=True)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, echo=True,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_tgi_generate_and_stream_agree(http):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 9, "details": True}}
    plain = http.post("/generate", json=body).json()
    details = plain["details"]
    assert details["generated_tokens"] == len(details["tokens"]) <= 9
    assert "".join(t["text"] for t in details["tokens"]) == plain["generated_text"]
    events = []
    with http.stream("POST", "/generate_stream", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    assert [e["token"]["id"] for e in events] == [t["id"] for t in details["tokens"]]
    assert events[-1]["generated_text"] == plain["generated_text"]
    assert events[-1]["details"]["finish_reason"] == details["finish_reason"]
    assert all(e["generated_text"] is None for e in events[:-1])


def test_tgi_full_text_and_regex_grammar(http):
    r = http.post("/generate", json={"inputs": PROMPT, "parameters": {
        "max_new_tokens": 20, "return_full_text": True,
        "grammar": {"type": "regex", "value": "(yes|no), [0-9]{2}"}}}).json()
    assert r["generated_text"].startswith(PROMPT)
    assert re.fullmatch(r"(yes|no), [0-9]{2}", r["generated_text"][len(PROMPT):])


def test_tokenize_detokenize_round_trip(http):
    r = http.post("/tokenize", json={"prompt": PROMPT}).json()
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == 1024
    assert "".join(r["token_strs"]) == PROMPT
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": PROMPT}
    bad = http.post("/detokenize", json={"tokens": [10 ** 9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
