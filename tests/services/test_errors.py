"""Bad input and overload: OpenAI-shaped errors with the right status, never a 500."""
from __future__ import annotations

import asyncio

import openai
import pytest
import websockets

from tests.services.conftest import running_server, tiny_settings

MESSAGES = [{"role": "user", "content": "Hello"}]


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize("body, param", [
    ({"temperature": -0.5}, "temperature"),
    ({"n": 0}, "n"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 5000}, "max_tokens"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"temperature": "hot"}, "temperature"),
    ({"stop": 5}, "stop"),
])
def test_invalid_chat_params_are_400(http, body, param):
    error = _error(http.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, **body}), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param or error["param"].startswith(param)


def test_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=-1)
    assert "temperature" in err.value.message


def test_prompt_beyond_context_is_400(http):
    error = _error(http.post("/v1/completions", json={"model": "tiny", "prompt": list(range(1, 1100))}), 400)
    assert "max_model_len" in error["message"]


@pytest.mark.parametrize("path, body", [
    ("/v1/completions", {"prompt": []}),
    ("/v1/completions", {"prompt": ""}),
    ("/v1/completions", {}),
    ("/generate", {"parameters": {}}),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}),  # `{}` is valid: 0 tokens
])
def test_other_invalid_bodies_are_400(http, path, body):
    _error(http.post(path, json=body), 400)


def test_malformed_json_is_400(http):
    error = _error(http.post("/v1/chat/completions", content=b'{"messages": [', headers={
        "content-type": "application/json"}), 400)
    assert "JSON" in error["message"]


def test_unknown_model_is_404(client, http):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert err.value.code == "model_not_found"
    assert _error(http.get("/v1/models/gpt-9"), 404)["code"] == "model_not_found"
    assert _error(http.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"}), 404)["param"] == "model"


def test_unknown_route_and_method_keep_the_shape(http):
    _error(http.get("/v1/nothing-here"), 404)
    _error(http.get("/v1/completions"), 405)  # GET /v1/chat/completions lists stored completions


def test_body_too_large_is_413(http):
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * (5 << 20)}]}
    error = _error(http.post("/v1/chat/completions", json=big), 413)
    assert error["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit applies as the body streams in
        for _ in range(6):
            yield b"x" * (1 << 20)
    _error(http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}), 413)


# -- auth --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(tiny_llama_path):
    with running_server(tiny_settings(tiny_llama_path, api_key="sk-right")) as s:
        yield s


@pytest.mark.parametrize("path, method", [("/v1/models", "GET"), ("/v1/chat/completions", "POST"),
                                          ("/v1/completions", "POST"), ("/generate", "POST")])
def test_auth_required(secured, path, method):
    with secured.http() as http:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "sk-right"}):
            error = _error(http.request(method, path, json={}, headers=headers), 401)
            assert error["code"] == "invalid_api_key"
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200


def test_auth_with_openai_client(secured):
    with pytest.raises(openai.AuthenticationError):
        secured.client(api_key="sk-wrong").models.list()
    r = secured.client(api_key="sk-right").chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
    assert r.usage.completion_tokens >= 1


async def test_websocket_auth(secured):
    url = f"{secured.ws_url}/v1/ws/generate"
    for headers in ({}, {"Authorization": "Bearer sk-wrong"}):
        with pytest.raises(websockets.InvalidStatus) as err:
            async with websockets.connect(url, additional_headers=headers):
                pass
        assert err.value.response.status_code == 401
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer sk-right"}) as ws:
        await ws.send('{"type": "generate", "id": 1, "prompt": "Hi", "max_tokens": 2}')
        assert '"type": "delta"' in await asyncio.wait_for(ws.recv(), 30)


# -- overload ------------------------------------------------------------------------------------
async def test_full_queue_is_503_with_retry_after(tiny_llama_path):
    # one running slot and one waiting slot: the third concurrent request must be refused
    settings = tiny_settings(tiny_llama_path, engine=dict(max_num_seqs=1, max_waiting=1))
    with running_server(settings) as server:
        async with server.async_client() as client:
            long = dict(model="tiny", messages=MESSAGES, max_tokens=900, stream=True, extra_body={"ignore_eos": True})
            running = await client.chat.completions.create(**long)
            await anext(aiter(running))
            waiting = asyncio.create_task(client.chat.completions.create(**long))
            for _ in range(500):
                if server.llm.engine.num_waiting() == 1:
                    break
                await asyncio.sleep(0.01)
            assert server.llm.engine.num_waiting() == 1
            with pytest.raises(openai.APIStatusError) as err:
                await client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2)
            assert err.value.status_code == 503
            assert err.value.response.headers["retry-after"] == "1"
            assert err.value.code == "server_overloaded"
            await running.close()
            await (await waiting).close()
        server.wait_idle()
        metrics = server.http().get("/metrics").text
        assert "livecast_request_rejected_total 1.0" in metrics
