"""The careless-client and attacker probes of the reliability issue, one regression test each:
invalid Unicode, origins, keys in logs, limits on n, prompts and WebSocket messages, spec/behaviour
agreement, and the media inputs that used to be accepted or refused wrongly."""
from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketDenialResponse

from livecast.services.app import create_app
from tests.media.app import build_app

SURROGATE = '"\\ud800"'  # JSON for a lone UTF-16 surrogate: valid JSON, not valid Unicode text


@pytest.fixture(scope="module")
def client(tiny_llama_path):
    app = build_app(diffusion=dict(resolution=64), llm_path=tiny_llama_path, max_body_bytes=64 << 10,
                    allowed_origins="http://allowed.example")
    with TestClient(app) as client:
        yield client


def _post(client, path: str, raw: str):
    return client.post(path, content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize("path, raw, param", [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": %s}], "max_tokens": 2}', "messages.0.content"),
    ("/v1/completions", '{"prompt": %s, "max_tokens": 2}', "prompt"),
    ("/generate", '{"inputs": %s}', "inputs"),
    ("/generate_stream", '{"inputs": %s}', "inputs"),
    ("/tokenize", '{"prompt": %s}', "prompt"),
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "tools": [{"type": '
                             '"function", "function": {"name": "f", "description": %s}}]}', "tools.0.function.description"),
    ("/v1/images/generations", '{"prompt": %s}', "prompt"),
])
def test_lone_surrogates_are_a_400_naming_the_field(client, path, raw, param):
    response = _post(client, path, raw % SURROGATE)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] is not None and error["param"].startswith(param.split(".")[0]), error
    assert "surrogate" in error["message"] or "unicode" in error["message"]


def test_websocket_surrogate_fails_that_id_only(client):
    with client.websocket_connect("/v1/ws/generate") as ws:
        ws.send_text('{"type": "generate", "id": "bad", "prompt": %s, "max_tokens": 2}' % SURROGATE)
        ws.send_text('{"type": "generate", "id": "good", "prompt": "Hello", "max_tokens": 3, "ignore_eos": true}')
        seen = {}
        while "good" not in seen or "bad" not in seen:
            message = ws.receive_json()
            if message["type"] in ("error", "done"):
                seen[message["id"]] = message
        assert seen["bad"]["type"] == "error" and "surrogate" in seen["bad"]["message"]
        assert seen["good"]["type"] == "done" and seen["good"]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("route", ["/v1/ws/generate", "/v1/ws/frames"])
def test_websockets_refuse_foreign_origins(client, route):
    with pytest.raises(WebSocketDenialResponse) as denial:
        with client.websocket_connect(route, headers={"origin": "http://evil.example"}):
            pass
    assert denial.value.status_code == 403 and denial.value.json()["error"]["code"] == "origin_not_allowed"
    for origin in ("http://testserver", "http://allowed.example"):  # same origin, and --allowed-origins
        with client.websocket_connect(route, headers={"origin": origin}) as ws:
            ws.send_text('{"type": "cancel", "id": "none"}' if route.endswith("generate") else '{"type": "next"}')
            assert ws.receive_json()["type"] in ("error", "hello")


def test_both_websockets_refuse_a_bad_key_the_same_way(tiny_llama_path):
    app = build_app(diffusion=dict(resolution=64), llm_path=tiny_llama_path, api_key="sk-right")
    with TestClient(app) as client:
        for route in ("/v1/ws/generate", "/v1/ws/frames"):
            for query in ("", "?api_key=sk-wrong"):
                with pytest.raises(WebSocketDenialResponse) as denial:
                    with client.websocket_connect(route + query):
                        pass
                assert denial.value.status_code == 401, route
                assert denial.value.json()["error"]["code"] == "invalid_api_key"


def test_keys_in_urls_never_reach_the_logs(caplog):
    create_app()  # installs the filter on uvicorn's loggers
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5000",
                                                "/v1/ws/frames?api_key=sk-secret&x=1")
    assert "sk-secret" not in caplog.text and "api_key=***" in caplog.text


def test_limits_on_n_prompts_and_messages(client):
    r = client.post("/v1/completions", json={"prompt": "Hi", "n": 2000, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"  # the edge's cap (test_counts.py)
    r = client.post("/v1/completions", json={"prompt": "Hi", "n": 100, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"  # inside it, the engine's --max-best-of
    r = client.post("/v1/completions", json={"prompt": ["Hi"] * 65, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}],
                                                  "max_completion_tokens": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    for field, value in (("top_k", 2 ** 63), ("seed", 2 ** 64), ("stop_token_ids", [-(2 ** 70)])):
        r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "min_tokens": 1, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    with client.websocket_connect("/v1/ws/generate") as ws:
        ws.send_text(json.dumps({"type": "generate", "id": 1, "prompt": "x" * (70 << 10)}))
        assert ws.receive_json()["code"] == "message_too_large"
        ws.send_text('{"type": "generate", "id": 2, "prompt": "Hi", "max_tokens": 1}')  # still open
        assert ws.receive_json()["id"] == 2


def test_logit_bias_is_applied(client):
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 4, "temperature": 0, "ignore_eos": True,
                                             "logit_bias": {"42": 100}, "logprobs": 0})
    assert r.status_code == 200
    forced = client.post("/detokenize", json={"tokens": [42] * 4}).json()["prompt"]
    assert r.json()["choices"][0]["text"] == forced


def test_aborted_requests_are_counted(client):
    def aborted() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('livecast_request_finished_total{finish_reason="abort"}'):
                return float(line.split()[-1])
        return 0.0

    before = aborted()
    with client.websocket_connect("/v1/ws/generate") as ws:
        ws.send_text('{"type": "generate", "id": 1, "prompt": "Hi", "max_tokens": 500, "ignore_eos": true}')
        assert ws.receive_json()["type"] == "delta"
        ws.send_text('{"type": "cancel", "id": 1}')
        while (message := ws.receive_json())["type"] != "done":
            assert message["type"] == "delta", message
        assert message["finish_reason"] == "abort"
    assert aborted() == before + 1


def test_the_spec_matches_the_behaviour(client):
    spec = client.get("/openapi.json").json()
    assert "422" not in json.dumps(spec["paths"])
    assert "text/plain" in json.dumps(spec["paths"]["/metrics"]["get"]["responses"]["200"])
    assert client.post("/tokenize", json={}).json()["count"] == 0  # schema-valid: accepted
    r = client.post("/v1/completions", json={"prompt": ""})  # the schema says minLength 1: a 400, as documented
    assert r.status_code == 400 and "400" in spec["paths"]["/v1/completions"]["post"]["responses"]


def test_media_edges(client):
    r = client.post("/v1/images/generations", json={"prompt": "one step", "num_inference_steps": 1})
    assert r.status_code == 200, r.text  # txt2img has no strength to run out of
    r = client.post("/v1/images/generations", json={"prompt": "x", "guidance_scale": 1e308})
    assert r.status_code == 400 and r.json()["error"]["param"] == "guidance_scale"
    video = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    no_fingerprint = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n" + video
    r = client.post("/v1/webrtc/offer", json={"sdp": no_fingerprint, "type": "offer"})
    assert r.status_code == 400 and "fingerprint" in r.json()["error"]["message"]
    many = no_fingerprint.replace("t=0 0\r\n", "t=0 0\r\na=fingerprint:sha-256 00\r\n") + video * 49
    r = client.post("/v1/webrtc/offer", json={"sdp": many, "type": "offer"})
    assert r.status_code == 400 and "one video track" in r.json()["error"]["message"]
    assert client.get("/v1/webrtc/sessions").json()["data"] == []  # no slot was held
