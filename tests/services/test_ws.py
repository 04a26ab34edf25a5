"""GET /v1/ws/generate with the `websockets` client: multiplexing, cancel, errors, disconnects."""
from __future__ import annotations

import asyncio
import json

import websockets

MESSAGES = [{"role": "user", "content": "Write a long story."}]


def _url(server) -> str:
    return f"{server.ws_url}/v1/ws/generate"


async def _recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 30))


async def _collect(ws, ids: set, on_message=None) -> dict:
    """Messages per id until every id in `ids` is done or errored."""
    seen: dict = {i: [] for i in ids}
    pending = set(ids)
    while pending:
        message = await _recv(ws)
        seen.setdefault(message.get("id"), []).append(message)
        if on_message is not None:
            await on_message(message)
        if message["type"] in ("done", "error") and message.get("id") in pending:
            pending.discard(message["id"])
    return seen


async def test_multiplexed_generations_and_cancel(server, http):
    prompt_count = http.post("/tokenize", json={"messages": MESSAGES}).json()["count"]
    async with websockets.connect(_url(server)) as ws:
        await ws.send(json.dumps({"type": "generate", "id": "a", "messages": MESSAGES, "max_tokens": 12,
                                  "temperature": 0, "ignore_eos": True}))
        await ws.send(json.dumps({"type": "generate", "id": 7, "prompt": "Once upon a time", "max_tokens": 20,
                                  "temperature": 0.7, "seed": 3, "ignore_eos": True}))
        await ws.send(json.dumps({"type": "generate", "id": "long", "prompt": "Count:", "max_tokens": 900,
                                  "ignore_eos": True}))

        async def cancel_long(message):
            if message["type"] == "delta" and message["id"] == "long" and not cancel_long.sent:
                cancel_long.sent = True
                await ws.send(json.dumps({"type": "cancel", "id": "long"}))
        cancel_long.sent = False
        seen = await _collect(ws, {"a", 7, "long"}, cancel_long)

    for id, max_tokens in (("a", 12), (7, 20)):
        deltas, done = seen[id][:-1], seen[id][-1]
        assert done["type"] == "done" and done["finish_reason"] == "length"
        assert all(m["type"] == "delta" for m in deltas)
        assert sum(len(m["token_ids"]) for m in deltas) == done["usage"]["completion_tokens"] == max_tokens
    assert seen["a"][-1]["usage"]["prompt_tokens"] == prompt_count
    done = seen["long"][-1]
    assert done["finish_reason"] == "abort"
    assert 0 < done["usage"]["completion_tokens"] < 900
    assert sum(len(m["token_ids"]) for m in seen["long"][:-1]) == done["usage"]["completion_tokens"]
    # the streamed chat text is what the HTTP route returns for the same request
    plain = http.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 12, "temperature": 0,
                                                    "ignore_eos": True}).json()
    assert "".join(m["text"] for m in seen["a"][:-1]) == plain["choices"][0]["message"]["content"]
    server.wait_idle()


async def test_errors_keep_the_socket_open(server):
    async with websockets.connect(_url(server)) as ws:
        await ws.send("{not json")
        assert (await _recv(ws))["code"] == "invalid_json"
        await ws.send(json.dumps({"type": "generate", "id": "t", "prompt": "Hi", "temperature": -1}))
        error = await _recv(ws)
        assert error["type"] == "error" and error["id"] == "t" and "temperature" in error["message"]
        await ws.send(json.dumps({"type": "generate", "id": "x", "prompt": "Hi", "max_tokens": "many"}))
        assert (await _recv(ws))["id"] == "x"
        await ws.send(json.dumps({"type": "generate", "id": "both"}))
        assert (await _recv(ws))["id"] == "both"
        await ws.send(json.dumps({"type": "cancel", "id": "nobody"}))
        assert (await _recv(ws))["code"] == "unknown_id"
        await ws.send(json.dumps({"type": "dance"}))
        assert (await _recv(ws))["code"] == "invalid_request"
        await ws.send(json.dumps([1, 2]))
        assert (await _recv(ws))["type"] == "error"
        # still usable afterwards
        await ws.send(json.dumps({"type": "generate", "id": "ok", "prompt": "Hi", "max_tokens": 3}))
        seen = await _collect(ws, {"ok"})
        assert seen["ok"][-1]["type"] == "done"


async def test_duplicate_id_is_refused_while_running(server):
    async with websockets.connect(_url(server)) as ws:
        request = {"type": "generate", "id": "dup", "prompt": "Hi", "max_tokens": 400, "ignore_eos": True}
        await ws.send(json.dumps(request))
        await ws.send(json.dumps(request))
        messages = []
        while not any(m["type"] == "error" for m in messages):
            messages.append(await _recv(ws))
        assert "already running" in messages[-1]["message"]
        await ws.send(json.dumps({"type": "cancel", "id": "dup"}))
        seen = await _collect(ws, {"dup"})
        # the first one carries on and ends once: aborted, or (float32 on an idle CPU is quick) its
        # 400 tokens already done before the cancel arrived; cancelling is tested on its own above
        done = seen["dup"][-1]
        assert done["type"] == "done" and (done["finish_reason"] == "abort" or done["usage"]["completion_tokens"] == 400)


async def test_socket_close_aborts_and_frees_blocks(server):
    core = server.llm.engine.engine
    before = core.stats().generation_tokens_total
    async with websockets.connect(_url(server)) as ws:
        for i in range(3):
            await ws.send(json.dumps({"type": "generate", "id": i, "messages": MESSAGES, "max_tokens": 900,
                                      "ignore_eos": True}))
        while (await _recv(ws))["type"] != "delta":
            pass
        assert core.block_manager.device.num_used > 0
    server.wait_idle()
    assert core.stats().generation_tokens_total - before < 3 * 900
