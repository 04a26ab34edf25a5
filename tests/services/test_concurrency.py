"""Concurrency, client disconnects and the metrics they leave behind."""
from __future__ import annotations

import asyncio
import re
import time

import httpx

MESSAGES = [[{"role": "user", "content": f"Tell me about topic number {i}."}] for i in range(4)]


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def test_64_concurrent_streams_finish_with_exact_usage(server, http):
    prompt_tokens = [http.post("/tokenize", json={"messages": m}).json()["count"] for m in MESSAGES]
    before = http.get("/metrics").text

    async def one(client, i: int):
        max_tokens = 8 + i % 8
        stream = await client.chat.completions.create(
            model="tiny", messages=MESSAGES[i % 4], max_tokens=max_tokens, temperature=0.8, seed=i, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        chunks = [c async for c in stream]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        usage = chunks[-1].usage
        assert finish == ["length"]
        assert (usage.prompt_tokens, usage.completion_tokens) == (prompt_tokens[i % 4], max_tokens)
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    async with server.async_client(http_client=None) as client:
        start = time.monotonic()
        texts = await asyncio.gather(*(one(client, i) for i in range(64)))
        elapsed = time.monotonic() - start
    assert all(texts) and len(set(texts)) > 32  # seeded samples differ
    assert elapsed < 120
    after = http.get("/metrics").text
    generated = sum(8 + i % 8 for i in range(64))
    assert _metric(after, "livecast_generation_tokens_total") - _metric(before, "livecast_generation_tokens_total") \
        == generated
    count = "livecast_time_to_first_token_seconds_count"
    assert _metric(after, count) - _metric(before, count) == 64
    itl = "livecast_inter_token_latency_seconds_count"
    assert _metric(after, itl) - _metric(before, itl) == generated - 64
    assert _metric(after, 'livecast_request_finished_total{finish_reason="length"}') >= 64
    server.wait_idle()


def test_sse_disconnect_aborts_and_frees_blocks(server, client, http):
    core = server.llm.engine.engine
    before = core.stats().generation_tokens_total
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES[0], max_tokens=1000, stream=True,
                                            extra_body={"ignore_eos": True})
    for _, _chunk in zip(range(3), stream):
        pass
    assert core.block_manager.device.num_used > 0
    stream.close()  # the client goes away mid-stream
    server.wait_idle()
    assert core.stats().generation_tokens_total - before < 1000  # aborted, not run to the end
    finished = http.get("/metrics").text
    assert "livecast_num_requests_running 0.0" in finished and "livecast_kv_cache_usage_ratio 0.0" in finished


def test_disconnect_of_a_non_streamed_request_aborts_it(server):
    core = server.llm.engine.engine
    before = core.stats().generation_tokens_total
    with httpx.Client(base_url=server.url, timeout=0.3) as http:
        try:
            http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1000, "ignore_eos": True})
        except httpx.ReadTimeout:
            pass  # the client gives up and closes its connection
    server.wait_idle()
    assert core.stats().generation_tokens_total - before < 1000


def test_health_reports_the_llm(http):
    body = http.get("/health").json()
    assert body["status"] == "ok" and body["diffusion"] is None
    assert body["llm"]["model"] == "tiny" and body["llm"]["max_model_len"] == 1024
