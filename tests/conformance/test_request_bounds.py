"""One rule for the document's numeric bounds on request fields: token limits below its floors are
served (Responses' max_output_tokens >= 16, runs' max_prompt_tokens and max_completion_tokens >= 256:
floors for hosted models; a small local model is often asked for a few tokens), and every other
bound is enforced: a value outside it is a 400 naming the field. The spec's own request examples
are valid requests and are served (or refused with an honest 4xx) too."""
from __future__ import annotations

import pytest

from tests.conformance import openapi
from tests.conformance.conftest import check

USER = [{"role": "user", "content": "hi"}]
BASE = {"/v1/chat/completions": {"model": "tiny", "messages": USER, "max_completion_tokens": 2},
        "/v1/completions": {"model": "tiny", "prompt": "hi", "max_tokens": 2},
        "/v1/responses": {"model": "tiny", "input": "hi", "max_output_tokens": 16},
        "/v1/assistants": {"model": "tiny"},
        "/v1/embeddings": {"model": "all-MiniLM-L6-v2", "input": "hi"}}
# (route, field, a value outside the document's bound)
OUT_OF_BOUNDS = [
    ("/v1/chat/completions", "temperature", 2.5), ("/v1/chat/completions", "top_p", 1.5),
    ("/v1/chat/completions", "n", 129), ("/v1/chat/completions", "top_logprobs", 21),
    ("/v1/chat/completions", "frequency_penalty", 2.5), ("/v1/chat/completions", "presence_penalty", -2.5),
    ("/v1/chat/completions", "messages", []),
    ("/v1/completions", "temperature", -0.5), ("/v1/completions", "top_p", 1.5), ("/v1/completions", "n", 0),
    ("/v1/completions", "logprobs", 6), ("/v1/completions", "best_of", 21), ("/v1/completions", "max_tokens", -1),
    ("/v1/completions", "frequency_penalty", -3), ("/v1/completions", "presence_penalty", 3),
    ("/v1/responses", "temperature", 2.5), ("/v1/responses", "top_p", -0.1), ("/v1/responses", "top_logprobs", 21),
    ("/v1/assistants", "temperature", 3), ("/v1/assistants", "top_p", 2), ("/v1/assistants", "name", "n" * 257),
    ("/v1/assistants", "description", "d" * 513),
    ("/v1/embeddings", "dimensions", 0), ("/v1/embeddings", "input", []),
]


@pytest.mark.parametrize("route,field,value", OUT_OF_BOUNDS, ids=[f"{r[4:]}.{f}" for r, f, _ in OUT_OF_BOUNDS])
def test_a_value_outside_a_documented_bound_is_a_400_naming_the_field(api, route, field, value):
    body = {**BASE[route], field: value}
    assert openapi.errors(openapi.request_schema("POST", route), body)  # the document refuses it too
    error = api.post(route, body, status=400, below_floor=("-",))
    assert error["param"] == field or error["param"].startswith(f"{field}"), error


# -- the document's own request examples ---------------------------------------------------------------
SERVED_EXAMPLES = ["/chat/completions", "/completions", "/embeddings", "/responses", "/responses/input_tokens",
                   "/responses/compact", "/conversations", "/conversations/{conversation_id}",
                   "/conversations/{conversation_id}/items", "/assistants", "/assistants/{assistant_id}", "/threads",
                   "/threads/{thread_id}", "/threads/{thread_id}/messages", "/threads/{thread_id}/runs",
                   "/threads/runs", "/vector_stores", "/vector_stores/{vector_store_id}",
                   "/vector_stores/{vector_store_id}/files", "/vector_stores/{vector_store_id}/file_batches",
                   "/chat/completions/{completion_id}", "/containers"]
EXAMPLES = [(path, title, body) for path in SERVED_EXAMPLES for title, body in openapi.request_examples("POST", path)]
# examples the document itself refuses (its schema and its examples disagree): sent all the same
INVALID_IN_THE_DOCUMENT = {("/responses", "Image input"), ("/responses", "Functions"),
                           ("/vector_stores/{vector_store_id}/file_batches", "")}


@pytest.fixture(scope="module")
def ids(api):
    """Real objects for the examples' path parameters and ids."""
    file_id = api.upload("/v1/files", {"file": ("faq.txt", b"Refunds take 5 days.")}, {"purpose": "assistants"})["id"]
    # a closed answer format: the examples' runs end in a few tokens
    assistant = api.post("/v1/assistants", {"model": "tiny", "response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes"]}},
                                     "required": ["answer"], "additionalProperties": False}}}})["id"]
    return {"conversation_id": api.post("/v1/conversations", {})["id"], "assistant_id": assistant,
            "thread_id": api.post("/v1/threads", {})["id"], "vector_store_id": api.post("/v1/vector_stores", {})["id"],
            "completion_id": api.post("/v1/chat/completions", {"model": "tiny", "messages": USER, "store": True,
                                                              "max_completion_tokens": 2})["id"],
            "file_id": file_id}


def _fill(value, ids: dict, path: str):
    """The example with this server's model and objects in place of OpenAI's placeholders."""
    if isinstance(value, dict):
        out = {k: _fill(v, ids, path) for k, v in value.items()}
        if "model" in out:
            out["model"] = "all-MiniLM-L6-v2" if path == "/embeddings" else "tiny"
        return out
    if isinstance(value, list):
        return [_fill(v, ids, path) for v in value]
    if isinstance(value, str):
        for prefix, key in (("asst_", "assistant_id"), ("vs_", "vector_store_id"), ("file-", "file_id")):
            if value.startswith(prefix):
                return ids[key]
    return value


@pytest.mark.parametrize("path,title,example", EXAMPLES, ids=[f"{p[1:]}:{t or 'default'}" for p, t, _ in EXAMPLES])
def test_the_documents_request_examples_are_served_or_honestly_refused(api, ids, path, title, example):
    assert (openapi.errors(openapi.request_schema("POST", path), example) != []) == \
        ((path, title) in INVALID_IN_THE_DOCUMENT)
    body = _fill(example, ids, path)
    # the examples set no output cap; a short one keeps the suite quick
    cap = {"/chat/completions": "max_completion_tokens", "/responses": "max_output_tokens",
           "/threads/runs": "max_completion_tokens", "/threads/{thread_id}/runs": "max_completion_tokens"}.get(path)
    if cap and "max_tokens" not in body:
        body[cap] = 300 if "runs" in path else 16  # a run's floor is 256
    if "{thread_id}" in path:  # a fresh thread: one run at a time per thread
        ids = {**ids, "thread_id": api.post("/v1/threads", {})["id"]}
    url = "/v1" + path.format(**ids)
    if body.get("stream"):
        schema = openapi.completion_chunk() if path == "/completions" else None
        schema = openapi.component("AssistantStreamEvent") if "runs" in path else schema
        assert api.stream(url, body, schema=schema)
        return
    r = api.http.post(url, json=body)
    if r.status_code == 200:
        check(openapi.response_schema("POST", path, 200), r.json(), f"POST {path} ({title}) 200")
    else:  # an honest refusal: a 4xx in OpenAI's error shape, naming what it refuses
        assert 400 <= r.status_code < 500, r.text
        error = r.json()["error"]
        assert error["message"] and error["type"], error
