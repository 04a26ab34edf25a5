"""LoRA load/unload through the ingress reach every LLM replica (services.scale.broadcast), without
Ray: replica-like servers on 127.0.0.1 that keep their own adapter set, the live set handed in."""
from __future__ import annotations

import socket

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from livecast.services.scale.replica import ReplicaHeader
from livecast.services.scale.routing import route_key
from tests.live_server import LiveServer
from tests.scale.test_ingress import _info, ingress_server


def adapter_server(replica_id: str, loaded: set[str]) -> Starlette:
    """vLLM's two routes over `loaded`; an adapter named `bad` is malformed everywhere, one named
    `only-a` loads on replica `a` alone (a replica whose disk lacks it)."""
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": None}}, status_code=status)

    async def load(request):
        name = (await request.json())["lora_name"]
        if name == "bad" or (name == "only-a" and replica_id != "a"):
            return error(400, f"adapter {name!r}: adapter_config.json is missing")
        if name in loaded:
            return error(400, f"an adapter named {name!r} is already loaded")
        loaded.add(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request):
        name = (await request.json())["lora_name"]
        if name not in loaded:
            return error(404, f"no adapter named {name!r} is loaded")
        loaded.remove(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    return Starlette(routes=[Route("/v1/load_lora_adapter", load, methods=["POST"]),
                             Route("/v1/unload_lora_adapter", unload, methods=["POST"])])


@pytest.fixture(scope="module")
def replicas():
    sets = {rid: set() for rid in ("a", "b", "media")}
    servers = {rid: LiveServer(ReplicaHeader(adapter_server(rid, sets[rid]), rid)).start() for rid in sets}
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    yield {"sets": sets, "servers": servers, "dead": f"http://127.0.0.1:{refused.getsockname()[1]}"}
    for server in servers.values():
        server.stop()
    refused.close()


@pytest.fixture
def farm(replicas):
    for loaded in replicas["sets"].values():
        loaded.clear()
    infos = [_info("a", replicas["servers"]["a"].url, 0), _info("b", replicas["servers"]["b"].url, 9),
             _info("media", replicas["servers"]["media"].url, 0, kind="media")]
    server = ingress_server(infos)
    yield replicas["sets"], server.url, replicas
    server.stop()


def _post(url: str, route: str, name: str, **extra) -> httpx.Response:
    return httpx.post(f"{url}/v1/{route}_lora_adapter", json={"lora_name": name, **extra}, timeout=30)


def test_only_the_post_routes_are_broadcast_and_to_the_llm_pool():
    key = route_key("POST", "/v1/load_lora_adapter", b'{"lora_name": "x", "lora_path": "/a"}')
    assert (key.pool, key.broadcast, key.prefix) == ("llm", True, None)
    assert route_key("POST", "/v1/unload_lora_adapter", b"{}").broadcast
    assert not route_key("GET", "/v1/load_lora_adapter", None).broadcast
    assert not route_key("POST", "/v1/completions", b'{"prompt": "x"}').broadcast


def test_load_and_unload_reach_every_llm_replica_and_no_media_one(farm):
    sets, url, _ = farm
    for name in ("s1", "s2", "s3"):  # one replica would get them all, or some, if routed
        loaded = _post(url, "load", name, lora_path="/adapters/" + name)
        assert loaded.status_code == 200 and loaded.text == f"Success: LoRA adapter '{name}' added successfully."
    assert sets == {"a": {"s1", "s2", "s3"}, "b": {"s1", "s2", "s3"}, "media": set()}
    assert _post(url, "unload", "s2").status_code == 200
    assert sets == {"a": {"s1", "s3"}, "b": {"s1", "s3"}, "media": set()}


def test_a_refusal_shared_by_every_replica_is_relayed_as_one_servers(farm):
    sets, url, _ = farm
    bad = _post(url, "load", "bad", lora_path="/x")
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "adapter 'bad': adapter_config.json is missing"
    missing = _post(url, "unload", "never-loaded")
    assert missing.status_code == 404 and "never-loaded" in missing.json()["error"]["message"]
    assert sets == {"a": set(), "b": set(), "media": set()}


def test_a_load_refused_by_one_replica_is_a_502_naming_it_and_undone_on_the_others(farm):
    sets, url, _ = farm
    partial = _post(url, "load", "only-a", lora_path="/x")
    error = partial.json()["error"]
    assert partial.status_code == 502 and error["code"] == "replica_failed" and error["type"] == "server_error"
    assert "failed on 1 of 2 llm replicas" in error["message"]
    assert "replica b: 400: adapter 'only-a': adapter_config.json is missing" in error["message"]
    assert "unloaded again from a" in error["message"] and "replica a:" not in error["message"]
    assert sets["a"] == set() and sets["b"] == set()  # no replica serves what the others lack


def test_an_unreachable_replica_fails_the_load_by_name(farm, replicas):
    sets, _, _ = farm
    server = ingress_server([_info("a", replicas["servers"]["a"].url, 0), _info("gone", replicas["dead"], 0)])
    try:
        response = _post(server.url, "load", "s1", lora_path="/x")
        message = response.json()["error"]["message"]
        assert response.status_code == 502 and "replica gone: unreachable (ConnectError)" in message
        assert sets["a"] == set()
    finally:
        server.stop()


def test_an_unload_missing_on_one_replica_names_it(farm):
    sets, url, _ = farm
    sets["a"].add("half")  # e.g. loaded before replica b restarted
    response = _post(url, "unload", "half")
    message = response.json()["error"]["message"]
    assert response.status_code == 502 and "replica b: 404: no adapter named 'half' is loaded" in message
    assert sets["a"] == set()


def test_no_live_llm_replica_is_a_503(replicas):
    server = ingress_server([_info("media", replicas["servers"]["media"].url, 0, kind="media")])
    try:
        response = _post(server.url, "load", "s1", lora_path="/x")
        assert response.status_code == 503 and "no live llm replica" in response.json()["error"]["message"]
        assert replicas["sets"]["media"] == set()
    finally:
        server.stop()
