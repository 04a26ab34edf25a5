"""/v1/chat/completions and /v1/models through the official openai client, sync and async."""
from __future__ import annotations

import pytest

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colors."}]


def test_models_list_and_retrieve(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_plain_chat_has_exact_usage(client, http):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, temperature=0,
                                       extra_body={"ignore_eos": True})
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    prompt = http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert r.usage.prompt_tokens == prompt["count"]
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == prompt["count"] + 12


def test_streamed_text_equals_non_streamed_at_temperature_0(client):
    plain = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == plain.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


def test_n_choices_and_seeds(client):
    def sample(seed):
        r = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, max_tokens=10, temperature=1.5,
                                           seed=seed, extra_body={"ignore_eos": True})
        assert sorted(c.index for c in r.choices) == [0, 1, 2]
        assert r.usage.completion_tokens == 30
        return [c.message.content for c in r.choices]

    first = sample(1234)
    assert sample(1234) == first  # the same seed reproduces every choice
    assert sample(4321) != first
    assert len(set(first)) > 1  # the n choices are independent samples


def test_stop_string_truncates(client):
    full = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0,
                                          extra_body={"ignore_eos": True}).choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]
    cut = full[:full.index(stop)]
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].message.content == cut
    assert r.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0,
                                            stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == cut


def test_logprobs_and_top_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, max_completion_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3
        values = [t.logprob for t in token.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        # greedy: the chosen token is the most likely one
        assert token.top_logprobs[0].token == token.token and token.top_logprobs[0].logprob == token.logprob
        assert bytes(token.bytes).decode() == token.token


async def test_async_client_streams(server):
    async with server.async_client() as client:
        plain = await client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0)
        stream = await client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8,
                                                      temperature=0, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == plain.choices[0].message.content


@pytest.mark.parametrize("content", [[{"type": "text", "text": "Name three "}, {"type": "text", "text": "colors."}]])
def test_content_parts_render_like_a_string(client, content):
    parts = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": content}],
                                           max_tokens=5, temperature=0)
    text = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name three colors."}],
                                          max_tokens=5, temperature=0)
    assert parts.usage.prompt_tokens == text.usage.prompt_tokens
    assert parts.choices[0].message.content == text.choices[0].message.content


def test_the_http_speculative_field_opts_a_request_out():
    from livecast.services.llm.protocol import ChatCompletionRequest, CompletionRequest

    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], speculative=False)
    assert chat.sampling_params(max_tokens=4).speculative is False
    assert CompletionRequest(model="m", prompt="hi").sampling_params(max_tokens=4).speculative is True
