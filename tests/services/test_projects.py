"""Projects (security finding 8): a key sees, runs in and deletes only its own project's objects.

One server with a keys file of two projects. Project A makes one object of every kind; then, for
every route of the app whose path names an object (enumerated from the app, so a route added later
is covered without being named here), every method answers project B's key with the 404 of a
missing object; every list leaves A's objects out for B; every create that references another
object refuses A's; and A still sees everything. The single `--api-key` and no key keep working,
in project `default`; a malformed keys file fails at startup naming its line."""
from __future__ import annotations

import re
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.routing import WebSocketRoute

from livecast.services import serve
from livecast.services.agents.config import AgentsConfig
from livecast.services.app import create_app
from livecast.services.projects import read_api_keys
from livecast.services.retrieval.config import RetrievalConfig
from livecast.services.sandbox.config import SandboxConfig
from livecast.services.settings import ServerSettings
from tests.live_server import light_agents
from tests.sandbox.conftest import TEST_CONFIG
from tests.services.conftest import running_server, tiny_settings
from tests.services.test_auth import _routes

KEY_A, KEY_B, KEY_A2 = "sk-project-a-0001", "sk-project-b-0001", "sk-project-a-0002"
ANSWER = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
ACTIVE = ("queued", "in_progress", "cancelling")
# routes whose path names something that is no project's stored object: a served model, and the
# media room's live video (WebRTC sessions, WHIP/WHEP streams: scoped per project too, tested with
# real peers in tests/media/test_whip_whep.py::test_streams_and_sessions_are_scoped_per_project)
NOT_STORED = ("/v1/models/", "/v1/webrtc/", "/v1/whip/", "/v1/whep/", "/v1/streams")
NOT_STORED_LISTS = {"/v1/models", "/v1/webrtc/sessions", "/v1/streams"}
# creates (POST, no id in the path): the bodies that reference project A's objects, each a 404 for B
# ([] where the body references no stored object)
RESPONSE_REFERENCES = lambda a: [  # noqa: E731
    {"previous_response_id": a["response_id"]}, {"conversation": a["conversation_id"]},
    {"tools": [{"type": "file_search", "vector_store_ids": [a["store_id"]]}]},
    {"tools": [{"type": "code_interpreter", "container": a["container_id"]}]}]
CREATES = {
    "/v1/responses": RESPONSE_REFERENCES, "/v1/responses/input_tokens": RESPONSE_REFERENCES,
    "/v1/responses/compact": RESPONSE_REFERENCES,
    "/v1/vector_stores": lambda a: [{"name": "b", "file_ids": [a["file_id"]]}],
    "/v1/assistants": lambda a: [
        {"model": "tiny", "tool_resources": {"file_search": {"vector_store_ids": [a["store_id"]]}}},
        {"model": "tiny", "tool_resources": {"code_interpreter": {"file_ids": [a["file_id"]]}}}],
    "/v1/threads": lambda a: [{"tool_resources": {"file_search": {"vector_store_ids": [a["store_id"]]}}}],
    "/v1/threads/runs": lambda a: [{"assistant_id": a["assistant_id"]}],
    **{path: lambda a: [] for path in (
        "/v1/files", "/v1/conversations", "/v1/containers", "/v1/embeddings", "/v1/chat/completions",
        "/v1/completions", "/generate", "/generate_stream", "/tokenize", "/detokenize", "/v1/webrtc/offer", "/v1/whip",
        "/v1/images/generations", "/v1/images/edits", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")},
}


def _client(server, key: str) -> httpx.Client:
    return server.http(headers={"Authorization": f"Bearer {key}"})


@pytest.fixture(scope="module")
def server(tiny_llama_path, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# KEY PROJECT\n{KEY_A} proj_a\n\n{KEY_B}   proj_b  # a comment\n{KEY_A2} proj_a\n")
    settings = tiny_settings(tiny_llama_path, api_keys=str(keys),
                             agents=AgentsConfig(data_dir=str(tmp_path_factory.mktemp("projects-store"))),
                             retrieval=RetrievalConfig(), sandbox=SandboxConfig(**TEST_CONFIG, unsafe=True))
    with running_server(settings) as s:
        yield s


@pytest.fixture(scope="module")
def a(server):
    with _client(server, KEY_A) as c:
        yield c


@pytest.fixture(scope="module")
def b(server):
    with _client(server, KEY_B) as c:
        yield c


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, (r.request.method, r.request.url, r.status_code, r.text)
    return r.json()


def _until(get, done, what: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while not done(obj := get()):
        assert time.monotonic() < deadline, f"{what} did not finish: {obj}"
        time.sleep(0.1)
    return obj


def _make_objects(c: httpx.Client, tag: str) -> dict[str, str]:
    """One object of every kind the server stores, made with client `c`: {path parameter: id}."""
    ids = {}
    upload = lambda name: _ok(c.post("/v1/files", data={"purpose": "assistants"},  # noqa: E731
                                     files={"file": (name, f"Tides rise and fall ({tag}).".encode())}))["id"]
    ids["file_id"], ids["other_file_id"] = upload("tides.txt"), upload("more.txt")
    ids["store_id"] = _ok(c.post("/v1/vector_stores", json={"name": tag, "file_ids": [ids["file_id"]]}))["id"]
    ids["batch_id"] = _ok(c.post(f"/v1/vector_stores/{ids['store_id']}/file_batches",
                                 json={"file_ids": [ids["other_file_id"]]}))["id"]
    _until(lambda: _ok(c.get(f"/v1/vector_stores/{ids['store_id']}")), lambda s: not s["file_counts"]["in_progress"],
           "ingestion")
    ids["response_id"] = _ok(c.post("/v1/responses", json={"model": "tiny", "input": "hi",
                                                           "max_output_tokens": 2}))["id"]
    ids["conversation_id"] = _ok(c.post("/v1/conversations", json={
        "items": [{"type": "message", "role": "user", "content": "hello"}]}))["id"]
    ids["item_id"] = _ok(c.get(f"/v1/conversations/{ids['conversation_id']}/items"))["data"][0]["id"]
    ids["assistant_id"] = _ok(c.post("/v1/assistants", json={"model": "tiny", "name": tag}))["id"]
    ids["thread_id"] = thread = _ok(c.post("/v1/threads", json={"messages": [{"role": "user", "content": "hi"}]}))["id"]
    ids["message_id"] = _ok(c.get(f"/v1/threads/{thread}/messages"))["data"][0]["id"]
    run = _ok(c.post(f"/v1/threads/{thread}/runs", json={
        "assistant_id": ids["assistant_id"], "max_completion_tokens": 16,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": ANSWER}}}))
    ids["run_id"] = run["id"]
    _until(lambda: _ok(c.get(f"/v1/threads/{thread}/runs/{run['id']}")), lambda r: r["status"] not in ACTIVE, "the run")
    ids["step_id"] = _ok(c.get(f"/v1/threads/{thread}/runs/{run['id']}/steps"))["data"][0]["id"]
    ids["completion_id"] = _ok(c.post("/v1/chat/completions", json={  # kept where the server stores them
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "store": True}))["id"]
    ids["container_id"] = _ok(c.post("/v1/containers", json={"name": tag}))["id"]
    ids["container_file_id"] = _ok(c.post(f"/v1/containers/{ids['container_id']}/files",
                                          files={"file": ("notes.txt", b"hi")}))["id"]
    return ids


@pytest.fixture(scope="module")
def objects(a, b) -> tuple[dict[str, str], dict[str, str]]:
    """Project A's objects, and project B's own (to reference A's from)."""
    return _make_objects(a, "a"), _make_objects(b, "b")


def _id_for(path: str, name: str, ids: dict[str, str]) -> str:
    if name == "file_id" and "{container_id}" in path:
        name = "container_file_id"
    if name not in ids:
        pytest.fail(f"{path}: no object of project A for {{{name}}}: make one in _make_objects (and check that "
                    f"another project gets 404 for it)")
    return ids[name]


def _concrete(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: _id_for(path, m[1], ids), path)


def _object_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every HTTP route whose path names a stored object."""
    found = []
    for route in _routes(app.routes):
        if isinstance(route, WebSocketRoute) or "{" not in route.path or route.path.startswith(NOT_STORED):
            continue
        found += [(method, route.path) for method in sorted(route.methods - {"HEAD"})]
    return found


def _body(method: str, path: str, ids: dict[str, str]) -> dict:
    """A valid request for the route (so it is the project check that answers, not validation)."""
    if method != "POST":
        return {}
    if path == "/v1/containers/{container_id}/files":
        return {"files": {"file": ("x.txt", b"x")}}
    last = path.rsplit("/", 1)[-1]
    bodies = {"messages": {"role": "user", "content": "x"}, "items": {"items": [{"type": "message", "role": "user",
                                                                                 "content": "x"}]},
              "runs": {"assistant_id": ids["assistant_id"]}, "search": {"query": "tides"},
              "files": {"file_id": ids["other_file_id"]}, "file_batches": {"file_ids": [ids["other_file_id"]]},
              "submit_tool_outputs": {"tool_outputs": [{"tool_call_id": "call_x", "output": "x"}]},
              "cancel": None, "{file_id}": {"attributes": {"k": "v"}}}
    return {"json": bodies.get(last, {"metadata": {"k": "v"}, "name": "x"})}


def test_another_projects_objects_are_not_found_on_every_route(server, a, b, objects):
    ids_a, _ = objects
    routes = _object_routes(server.app)
    assert len(routes) > 40 and ("DELETE", "/v1/containers/{container_id}/files/{file_id}") in routes
    missing = {name: f"{value}0" for name, value in ids_a.items()}  # ids no one has

    def as_names(error: dict) -> dict:
        text = error["message"]
        for ids in (missing, ids_a):  # the longer ids first: each missing id extends one of A's
            for name, value in ids.items():
                text = text.replace(value, f"<{name}>")
        return {**error, "message": text}

    for method, path in routes:
        r = b.request(method, _concrete(path, ids_a), **_body(method, path, ids_a))
        assert r.status_code == 404, (method, path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "not_found", (method, path, r.text)
        # the very 404 of an object that does not exist: the answer says nothing of A's ids
        absent = a.request(method, _concrete(path, missing), **_body(method, path, ids_a))
        assert absent.status_code == 404 and as_names(r.json()["error"]) == as_names(absent.json()["error"]), (
            method, path, r.text, absent.text)
    for method, path in routes:  # A still has every object
        if method == "GET":
            r = a.get(_concrete(path, ids_a))
            assert r.status_code == 200, (path, r.text)


def test_lists_show_only_the_callers_project(server, a, b, objects):
    ids_a, ids_b = objects
    lists = [route.path for route in _routes(server.app.routes) if not isinstance(route, WebSocketRoute)
             and route.path.startswith("/v1/") and "{" not in route.path and "GET" in route.methods
             and route.path not in NOT_STORED_LISTS]
    assert {"/v1/files", "/v1/vector_stores", "/v1/assistants", "/v1/containers"} <= set(lists)
    for path in lists:
        seen_by_a = {o["id"] for o in _ok(a.get(path))["data"]}
        seen_by_b = {o["id"] for o in _ok(b.get(path))["data"]}
        assert seen_by_a & set(ids_a.values()) and not seen_by_a & set(ids_b.values()), path
        assert seen_by_b & set(ids_b.values()) and not seen_by_b & set(ids_a.values()), path
    # a page cursor from another project is no cursor here
    assert b.get("/v1/assistants", params={"after": ids_a["assistant_id"]}).status_code == 400


def test_creates_cannot_reference_another_projects_objects(server, a, b, objects):
    ids_a, ids_b = objects
    creates = [route.path for route in _routes(server.app.routes) if not isinstance(route, WebSocketRoute)
               and "{" not in route.path and "POST" in route.methods]
    unclassified = [path for path in creates if path not in CREATES]
    assert unclassified == [], "say in CREATES which objects these creates reference (and test B gets 404)"
    for path in creates:
        for body in CREATES[path](ids_a):
            r = b.post(path, json={"model": "tiny", "input": "hi", **body})
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, body, r.text)
    # B's own objects, given A's: a file into B's store, A's assistant on B's thread
    for path, body in ((f"/v1/vector_stores/{ids_b['store_id']}/files", {"file_id": ids_a["file_id"]}),
                       (f"/v1/vector_stores/{ids_b['store_id']}/file_batches", {"file_ids": [ids_a["file_id"]]}),
                       (f"/v1/threads/{ids_b['thread_id']}/runs", {"assistant_id": ids_a["assistant_id"]}),
                       (f"/v1/threads/{ids_b['thread_id']}", {"tool_resources": {
                           "file_search": {"vector_store_ids": [ids_a["store_id"]]}}}),
                       (f"/v1/assistants/{ids_b['assistant_id']}", {"tool_resources": {
                           "file_search": {"vector_store_ids": [ids_a["store_id"]]}}})):
        r = b.post(path, json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (path, r.text)
    # the same references work within a project
    made = _ok(a.post("/v1/responses", json={"model": "tiny", "input": "and?", "max_output_tokens": 2,
                                             "previous_response_id": ids_a["response_id"]}))
    assert made["previous_response_id"] == ids_a["response_id"]


def test_a_projects_second_key_sees_its_objects(server, objects):
    ids_a, _ = objects
    with _client(server, KEY_A2) as a2:
        assert _ok(a2.get(f"/v1/assistants/{ids_a['assistant_id']}"))["id"] == ids_a["assistant_id"]
        assert a2.get(f"/v1/files/{ids_a['file_id']}/content").content.startswith(b"Tides rise")
    with _client(server, "sk-project-c-0001") as stranger:
        assert stranger.get("/v1/assistants").status_code == 401


def test_every_route_that_names_an_object_is_scoped_or_said_not_to_be():
    """With every room on (no lifespan): each id a path can name is one test_another_projects_… makes."""
    app = create_app(ServerSettings())
    known = {"response_id", "conversation_id", "item_id", "assistant_id", "thread_id", "message_id", "run_id",
             "step_id", "file_id", "store_id", "batch_id", "container_id", "completion_id"}
    for _, path in _object_routes(app):
        names = set(re.findall(r"\{([^}:]+)", path))
        assert names <= known, f"{path}: make an object for {names - known} in _make_objects, or add it to NOT_STORED"


# -- one key, no key, a bad keys file -------------------------------------------------------------------------
def _files_app(**settings) -> TestClient:
    return TestClient(create_app(ServerSettings(enable_llm=False, enable_diffusion=False,
                                                **{**light_agents(), **settings})))


def _project_of(client: TestClient, file_id: str) -> str:
    return client.app.state.store.query_one("SELECT project FROM files WHERE id = ?", (file_id,))["project"]


def test_the_single_api_key_is_one_project():
    with _files_app(api_key="sk-single-key") as client:
        key = {"Authorization": "Bearer sk-single-key"}
        made = client.post("/v1/files", headers=key, data={"purpose": "assistants"}, files={"file": ("a.txt", b"a")})
        assert made.status_code == 200 and _project_of(client, made.json()["id"]) == "default"
        assert [f["id"] for f in client.get("/v1/files", headers=key).json()["data"]] == [made.json()["id"]]
        assert client.get("/v1/files", headers={"Authorization": "Bearer sk-wrong-key"}).status_code == 401


def test_no_key_puts_everything_in_one_project():
    with _files_app() as client:
        made = client.post("/v1/files", data={"purpose": "assistants"}, files={"file": ("a.txt", b"a")}).json()
        assert _project_of(client, made["id"]) == "default"
        assert client.get(f"/v1/files/{made['id']}").json()["id"] == made["id"]


@pytest.mark.parametrize("text, fault", [
    ("sk-good-key-1 proj_a\nsk-bad-key-2 proj_b extra\n", "line 2: expected `KEY PROJECT`"),
    ("# no project\nsk-lonely-key\n", "line 2: expected `KEY PROJECT`"),
    ("short proj_a\n", "line 1: the key is shorter than 8"),
    ("sk-good-key-1 proj/a\n", "line 1: project 'proj/a' must be"),
    ("sk-good-key-1 proj_a\n\nsk-good-key-1 proj_b\n", "line 3: the key of line 1 again"),
    ("# only comments\n\n", "no keys"),
])
def test_a_malformed_keys_file_fails_at_startup_naming_the_line(tmp_path, capsys, text, fault):
    keys = tmp_path / "keys.txt"
    keys.write_text(text)
    with pytest.raises(ValueError, match=re.escape(fault)) as error:
        read_api_keys(keys)
    assert str(keys) in str(error.value)
    assert serve.main(["serve", "--api-keys", str(keys), "--no-llm", "--no-diffusion"]) == 2
    assert fault in capsys.readouterr().out


def test_a_missing_keys_file_and_a_key_in_two_projects_fail_at_startup(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        ServerSettings(api_keys=str(tmp_path / "missing.txt"))
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-shared-key proj_a\n")
    with pytest.raises(ValueError, match="project 'proj_a'"):
        ServerSettings(api_key="sk-shared-key", api_keys=str(keys))
    assert ServerSettings(api_key="sk-other-key", api_keys=str(keys)).key_projects == {
        "sk-shared-key": "proj_a", "sk-other-key": "default"}
