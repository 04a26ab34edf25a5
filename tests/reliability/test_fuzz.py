"""A seeded fuzz run against the server's own OpenAPI document: bodies drawn from each route's
request schema (valid ones) and arbitrary JSON (mostly invalid ones). The server must answer
every one without a 5xx, with a status the document lists for that route, and in OpenAI's error
shape whenever it refuses. Generation lengths in valid bodies are capped so the run stays short."""
from __future__ import annotations

import json

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis_jsonschema import from_schema

ROUTES = ["/v1/chat/completions", "/v1/completions", "/generate", "/tokenize", "/detokenize"]
CAPS = {"max_tokens": 4, "max_completion_tokens": 4, "max_new_tokens": 4, "n": 2, "best_of": 2, "logprobs": 2,
        "top_logprobs": 2, "min_tokens": 2}
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def spec(server, http):
    return http.get("/openapi.json").json()


def _body_schema(spec: dict, path: str) -> dict:
    content = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {**content, "components": spec["components"]}


def _capped(body):
    """Keep a drawn body valid but cheap: small token counts and sample counts."""
    if isinstance(body, dict):
        return {k: (min(v, CAPS[k]) if k in CAPS and isinstance(v, int) and not isinstance(v, bool) else _capped(v))
                for k, v in body.items()}
    if isinstance(body, list):
        return [_capped(v) for v in body]
    return body


def _check(spec: dict, path: str, response) -> None:
    documented = spec["paths"][path]["post"]["responses"]
    assert response.status_code < 500, (path, response.status_code, response.text[:300])
    assert str(response.status_code) in documented, (path, response.status_code, sorted(documented))
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["type"], error


@pytest.mark.parametrize("path", ROUTES)
def test_schema_valid_bodies_never_5xx(server, http, spec, path):
    @seed(1234)
    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=from_schema(_body_schema(spec, path)))
    def check(body):
        body = _capped(body)
        if path in ("/v1/chat/completions", "/v1/completions"):
            body.setdefault("max_tokens", CAPS["max_tokens"])  # absent, it means "up to the context"
        elif path == "/generate" and isinstance(body.get("parameters"), dict):
            body["parameters"].setdefault("max_new_tokens", CAPS["max_new_tokens"])
        elif path == "/generate":
            body["parameters"] = {"max_new_tokens": CAPS["max_new_tokens"]}
        _check(spec, path, http.post(path, json=body, timeout=60))

    check()
    server.wait_idle()


@pytest.mark.parametrize("path", ROUTES)
def test_arbitrary_json_never_5xx(server, http, spec, path):
    @seed(99)
    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=JSON)
    def check(body):
        response = http.post(path, content=json.dumps(_capped(body)), headers={"content-type": "application/json"},
                             timeout=60)
        _check(spec, path, response)

    check()
    server.wait_idle()
