"""The scaled server end to end: a real local Ray, Serve replicas each running the full app, the ingress.

Order matters: the fault test kills a replica, so it runs last (pytest keeps file order).
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import pytest
import websockets

from tests.media.rtc_client import RTCClient

pytestmark = pytest.mark.ray
SYSTEM = ("You are the narrator of a long-running radio drama about a lighthouse keeper, her cat and "
          "the ships that pass the rocks at night. Keep every answer in character, in the present tense, "
          "and never mention that you are a language model. The keeper's name is Maren; the cat is Ash. ") * 2


def _llm_ids(cluster) -> set[str]:
    return {r["id"] for r in cluster.replicas() if r["kind"] == "llm"}


def _metric(text: str, name: str, replica: str) -> float:
    match = re.search(rf'^{name}\{{[^}}]*replica="{re.escape(replica)}"[^}}]*\}} (\S+)$', text, re.M)
    assert match, f"{name} for {replica} not in /metrics"
    return float(match.group(1))


def test_requests_reach_both_llm_replicas_and_health_lists_all(cluster, http):
    health = http.get("/health").json()
    assert health["mode"] == "ray" and health["status"] == "ok", health
    replicas = health["replicas"]
    assert sorted(r["kind"] for r in replicas) == ["llm", "llm", "media"]
    assert len({r["pid"] for r in replicas}) == 3 and all(r["healthy"] and r["device"] == "cpu" for r in replicas)
    seen = set()
    for i in range(12):
        response = http.post("/v1/completions", json={"model": "tiny", "prompt": f"request {i}: tell me about {i * 7919}",
                                                     "max_tokens": 4})
        assert response.status_code == 200, response.text
        assert response.json()["object"] == "text_completion"
        seen.add(response.headers["x-livecast-replica"])
    assert seen == _llm_ids(cluster)


def test_same_long_prefix_lands_on_one_replica_and_hits_its_prefix_cache(cluster, http):
    owners, prompt_tokens = [], 0
    for question in ("Where is the cat?", "What ship passes tonight?", "Is the lamp lit?", "Who knocks?"):
        response = http.post("/v1/chat/completions", json={
            "model": "tiny", "max_tokens": 4, "messages": [{"role": "system", "content": SYSTEM},
                                                          {"role": "user", "content": question}]})
        assert response.status_code == 200, response.text
        owners.append(response.headers["x-livecast-replica"])
        if len(owners) == 1:  # the first request fills the owner's cache; the next three should hit it
            before = http.get("/metrics").text
        else:
            prompt_tokens += response.json()["usage"]["prompt_tokens"]
    assert len(set(owners)) == 1, owners
    after = http.get("/metrics").text
    # livecast_prompt_tokens counts the prompt tokens a replica computed, prefix-cache hits excluded
    computed = (_metric(after, "livecast_prompt_tokens_total", owners[0])
                - _metric(before, "livecast_prompt_tokens_total", owners[0]))
    assert prompt_tokens > 3 * 100 and computed < 0.3 * prompt_tokens, (computed, prompt_tokens)
    assert _metric(after, "livecast_prefix_cache_hit_rate", owners[0]) > 0


def test_metrics_carry_the_replica_label_of_each_llm_replica(cluster, http):
    response = http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    for replica in _llm_ids(cluster):
        assert _metric(response.text, "livecast_prompt_tokens_total", replica) > 0
    assert response.text.count("# TYPE livecast_prompt_tokens_total ") == 1


def test_sse_and_websocket_token_streams_through_the_ingress(cluster, http):
    with http.stream("POST", "/v1/chat/completions", json={
            "model": "tiny", "stream": True, "max_tokens": 8, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Count to ten."}]}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-livecast-replica"] in _llm_ids(cluster)
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 1

    async def ws_generate() -> tuple[list[dict], str]:
        async with websockets.connect(cluster.url.replace("http", "ws") + "/v1/ws/generate") as ws:
            await ws.send(json.dumps({"type": "generate", "id": "g", "prompt": "Once upon a time",
                                      "max_tokens": 6, "ignore_eos": True}))
            messages = []
            while not messages or messages[-1]["type"] not in ("done", "error"):
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            return messages, ws.response.headers["x-livecast-replica"]

    messages, replica = asyncio.run(ws_generate())
    assert replica in _llm_ids(cluster)
    assert messages[-1]["type"] == "done" and messages[-1]["usage"]["completion_tokens"] == 6
    assert sum(len(m["token_ids"]) for m in messages if m["type"] == "delta") == 6


async def test_webrtc_offer_is_answered_by_the_media_replica_and_frames_come_back(cluster):
    media = next(r for r in cluster.replicas() if r["kind"] == "media")
    client = RTCClient(cluster.url)
    try:
        response = await client.connect(prompt="neon lighthouse", strength=1.0)
        assert response.status_code == 200, response.text
        assert response.headers["x-livecast-replica"] == media["id"]
        await client.wait_frames(5, timeout=60)
        async with httpx.AsyncClient(base_url=cluster.url, timeout=30) as http:
            listed = (await http.get("/v1/webrtc/sessions")).json()
            assert [s["replica"] for s in listed["data"]] == [media["id"]]
            # the session id was pinned from the answer: the hang-up reaches the owner
            closed = await http.delete(f"/v1/webrtc/sessions/{client.session_id}")
            assert closed.status_code == 200 and closed.json()["deleted"] is True
            assert closed.headers["x-livecast-replica"] == media["id"]
    finally:
        await client.close()


def _stream(url: str, prompt: str, out: dict) -> None:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=url, timeout=120) as client, client.stream("POST", "/v1/completions", json=body) as r:
        out["replica"] = r.headers["x-livecast-replica"]
        out["events"] = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                out["events"].append(line[6:])


def _plain(url: str, prompt: str, out: dict) -> None:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 150, "ignore_eos": True}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    out.update(status=response.status_code, replica=response.headers.get("x-livecast-replica"), body=response.text)


def test_killed_replica_loses_no_unstarted_request_and_is_replaced(cluster, http):
    """SIGKILL one LLM replica with 16 requests in flight: 8 streams already streaming, 8 plain
    requests not yet answered. The plain ones are retried on the survivor; streams cut mid-way
    end with the replica_lost event; nothing hangs; Serve brings up a replacement."""
    old_pids = {r["pid"] for r in cluster.replicas()}
    streams, plains = [{} for _ in range(8)], [{} for _ in range(8)]
    threads = [threading.Thread(target=_stream, args=(cluster.url, f"story {i} of the sea", out)) for i, out in enumerate(streams)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not all(len(s.get("events", ())) >= 2 for s in streams):
        assert time.monotonic() < deadline, "streams did not start"
        time.sleep(0.02)
    plain_threads = [threading.Thread(target=_plain, args=(cluster.url, f"question {i} about ships", out))
                     for i, out in enumerate(plains)]
    for t in plain_threads:
        t.start()
    time.sleep(0.5)  # the plain requests reach the replicas
    streaming = {rid: sum(s["replica"] == rid for s in streams) for rid in _llm_ids(cluster)}
    # requests the ingress has open on each replica, minus its streams: plain ones not yet answered
    waiting = {rid: cluster.ingress.router._in_flight.get(rid, 0) - n for rid, n in streaming.items()}
    victim = max(streaming, key=lambda rid: (streaming[rid] > 0 and waiting[rid] > 0, waiting[rid]))
    on_victim, plain_on_victim = streaming[victim], waiting[victim]
    cluster.kill(victim)
    for t in threads + plain_threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a request hung after the kill"

    assert plain_on_victim > 0, f"no plain request was in flight on the victim ({waiting}): the retry went unexercised"
    for out in plains:
        assert out["status"] == 200 and out["replica"] != victim, out
        assert json.loads(out["body"])["usage"]["completion_tokens"] == 150
    for out in streams:
        if out["replica"] == victim:
            assert out["events"][-1] != "[DONE]"
            assert json.loads(out["events"][-1])["error"]["code"] == "replica_lost"
        else:
            assert out["events"][-1] == "[DONE]"
    assert 1 <= on_victim <= 8

    # the endpoint keeps answering, and Serve replaces the dead replica (a new pid)
    response = http.post("/v1/completions", json={"model": "tiny", "prompt": "still there?", "max_tokens": 3})
    assert response.status_code == 200 and response.headers["x-livecast-replica"] != victim
    deadline = time.monotonic() + 90
    while True:
        replicas = http.get("/health").json()["replicas"]
        llm = [r for r in replicas if r["kind"] == "llm"]
        if len(llm) == 2 and any(r["pid"] not in old_pids for r in llm) and all(r["healthy"] for r in llm):
            break
        assert time.monotonic() < deadline, f"no replacement replica in 90 s: {replicas}"
        time.sleep(0.5)
    assert victim not in {r["id"] for r in llm}
