"""The ingress without Ray: real replica-like servers on 127.0.0.1 (uvicorn, and raw sockets that
fail in the ways a dying process does), the live set handed in directly. Fast and deterministic:
the replicas' reported loads fix the order in which the router offers them."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

from livecast.services.scale.config import ScaleConfig
from livecast.services.scale.ingress import Ingress
from livecast.services.scale.replica import ReplicaHeader
from tests.live_server import LiveServer


def backend(replica_id: str, release: threading.Event, aborted: threading.Event) -> Starlette:
    async def echo(request):
        return JSONResponse({"replica": replica_id, "auth": request.headers.get("authorization"),
                             "body": (await request.body()).decode()})

    async def teapot(request):
        return Response(b"\x00\x01binary", status_code=418, headers={"x-custom": "kept"},
                        media_type="application/octet-stream")

    async def created(request):
        return JSONResponse({"id": "resp_abc", "object": "response"})

    async def owner(request):
        return JSONResponse({"replica": replica_id})

    async def cut_stream(request):
        async def events():
            yield b'data: {"n": 1}\n\n'
            await asyncio.sleep(0.05)
            raise RuntimeError("the process dies here")  # uvicorn drops the connection mid-body
        return StreamingResponse(events(), media_type="text/event-stream")

    async def endless(request):
        async def events():
            try:
                while True:
                    yield b'data: {"tick": 1}\n\n'
                    await asyncio.sleep(0.02)
            finally:
                aborted.set()
        return StreamingResponse(events(), media_type="text/event-stream")

    async def held(request):
        await asyncio.to_thread(release.wait, 30)
        return JSONResponse({"released": True})

    async def ws_echo(websocket):
        await websocket.accept()
        text = await websocket.receive_text()
        await websocket.send_text(f"{replica_id}:{text}")
        await websocket.close(code=4001, reason="bye")

    return Starlette(routes=[
        Route("/v1/completions", echo, methods=["POST"]), Route("/v1/models", echo, methods=["GET"]),
        Route("/teapot", teapot), Route("/v1/responses", created, methods=["POST"]),
        Route("/v1/responses/{rid}", owner), Route("/v1/chat/completions", cut_stream, methods=["POST"]),
        Route("/held", held), Route("/endless", endless), WebSocketRoute("/v1/ws/generate", ws_echo)])


class RawFailure:
    """A 'replica' whose every connection is accepted and closed unanswered (died mid-request)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()


def _info(rid: str, url: str, load: int, kind: str = "llm") -> dict:
    return {"id": rid, "kind": kind, "address": url, "pid": 1, "device": "cpu", "load": load}


@pytest.fixture(scope="module")
def farm():
    release, aborted = threading.Event(), threading.Event()
    servers = {rid: LiveServer(ReplicaHeader(backend(rid, release, aborted), rid)).start() for rid in ("ok-a", "ok-b")}
    hangup = RawFailure()
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    dead_url = f"http://127.0.0.1:{refused.getsockname()[1]}"
    yield {"servers": servers, "hangup": hangup.url, "dead": dead_url, "release": release, "aborted": aborted}
    release.set()
    for server in servers.values():
        server.stop()
    hangup.sock.close()
    refused.close()


def ingress_server(infos: list[dict], **scale) -> LiveServer:
    async def poll():
        return infos

    config = ScaleConfig(**{"replicas": 1, "heartbeat_s": 5.0, **scale})
    return LiveServer(Ingress(config, poll, max_body_bytes=1 << 20, retry_after_s=2)).start()


def test_failed_replicas_are_retried_before_any_byte_reaches_the_client(farm):
    # loads order the candidates: refused, hung-up, then the live one last
    infos = [_info("dead", farm["dead"], 0), _info("hangup", farm["hangup"], 1),
             _info("ok-a", farm["servers"]["ok-a"].url, 50)]
    server = ingress_server(infos)
    try:
        response = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer k1"}, timeout=30)
        assert response.status_code == 200 and response.headers["x-livecast-replica"] == "ok-a"
        assert response.json()["auth"] == "Bearer k1"
        assert set(server.app._down) == {"dead", "hangup"}  # skipped until their heartbeats age out
    finally:
        server.stop()


def test_all_tries_failing_is_a_503_with_retry_after(farm):
    server = ingress_server([_info("dead", farm["dead"], 0), _info("hangup", farm["hangup"], 0)])
    try:
        response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "x"}, timeout=30)
        assert response.status_code == 503 and response.headers["retry-after"] == "2"
        assert response.json()["error"]["type"] == "server_error"
        assert response.headers["x-livecast-replica"] == "ingress"  # the ingress's own answer
        media = httpx.post(f"{server.url}/v1/images/generations", json={}, timeout=30)
        assert media.status_code == 503 and "no live media replica" in media.json()["error"]["message"]
    finally:
        server.stop()


def test_status_headers_and_bytes_pass_through_and_a_cut_stream_ends_with_replica_lost(farm):
    server = ingress_server([_info("ok-a", farm["servers"]["ok-a"].url, 0)])
    try:
        teapot = httpx.get(f"{server.url}/teapot", timeout=30)
        assert (teapot.status_code, teapot.content, teapot.headers["x-custom"]) == (418, b"\x00\x01binary", "kept")
        assert teapot.headers["x-livecast-replica"] == "ok-a"
        body = json.dumps({"model": "m", "prompt": "héllo"}, ensure_ascii=False)
        echo = httpx.post(f"{server.url}/v1/completions", content=body.encode(), timeout=30)
        assert echo.json()["body"] == body
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={"messages": []}, timeout=30) as r:
            events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[0]) == {"n": 1}
        error = json.loads(events[-1])["error"]
        assert error["code"] == "replica_lost" and error["type"] == "server_error" and len(events) == 2
    finally:
        server.stop()


def test_a_client_hanging_up_mid_stream_closes_the_replica_side(farm):
    server = ingress_server([_info("ok-a", farm["servers"]["ok-a"].url, 0)])
    try:
        with httpx.stream("GET", f"{server.url}/endless", timeout=30) as r:
            assert next(r.iter_lines()) == 'data: {"tick": 1}'
        assert farm["aborted"].wait(10), "the replica kept streaming to a client that left"
        # the replica sees the hang-up as the ingress's proxy unwinds: its count drops in that same
        # unwinding, a moment after the replica's event may fire
        deadline = time.monotonic() + 10
        while server.app.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.app.in_flight == 0
    finally:
        server.stop()


def test_created_ids_pin_later_requests_to_their_owner(farm):
    infos = [_info(rid, s.url, 0) for rid, s in farm["servers"].items()]
    server = ingress_server(infos)
    try:
        created = httpx.post(f"{server.url}/v1/responses", json={"input": "hi"}, timeout=30)
        owner = created.headers["x-livecast-replica"]
        seen = {httpx.get(f"{server.url}/v1/responses/resp_abc", timeout=30).json()["replica"] for _ in range(6)}
        assert seen == {owner}
        # an id nobody pinned is spread over both (the test above would pass vacuously otherwise)
        spread = {httpx.get(f"{server.url}/v1/responses/resp_other", timeout=30).json()["replica"] for _ in range(6)}
        assert spread == set(farm["servers"])
    finally:
        server.stop()


def test_beyond_max_inflight_the_ingress_answers_503(farm):
    server = ingress_server([_info("ok-a", farm["servers"]["ok-a"].url, 0)], max_inflight=1)
    try:
        holder = threading.Thread(target=httpx.get, args=(f"{server.url}/held",), kwargs={"timeout": 30})
        holder.start()
        deadline = time.monotonic() + 10
        while server.app.in_flight < 1:
            assert time.monotonic() < deadline, "the held request never reached the ingress"
            time.sleep(0.01)
        refused = httpx.get(f"{server.url}/v1/models", timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        farm["release"].set()
        holder.join(timeout=30)
        assert httpx.get(f"{server.url}/v1/models", timeout=30).status_code == 200
    finally:
        server.stop()


async def test_websocket_bridge_relays_messages_close_codes_and_checks_origin(farm):
    server = ingress_server([_info("ok-b", farm["servers"]["ok-b"].url, 0)])
    try:
        url = server.ws_url + "/v1/ws/generate"
        async with websockets.connect(url) as ws:
            assert ws.response.headers["x-livecast-replica"] == "ok-b"
            await ws.send("ping")
            assert await ws.recv() == "ok-b:ping"
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (4001, "bye")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url, origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        # the page's own origin (the ingress's host) is allowed
        async with websockets.connect(url, origin=server.url) as ws:
            await ws.send("x")
            assert await ws.recv() == "ok-b:x"
    finally:
        server.stop()


async def test_a_replica_that_drops_a_websocket_gives_replica_lost_and_1011():
    async def handler(ws):
        await ws.send("first")
        ws.transport.abort()  # no close frame, as when the process is killed

    async with websockets.serve(handler, "127.0.0.1", 0) as upstream:
        port = upstream.sockets[0].getsockname()[1]
        server = await asyncio.to_thread(ingress_server, [_info("r", f"http://127.0.0.1:{port}", 0)])
        try:
            async with websockets.connect(server.ws_url + "/v1/ws/generate") as ws:
                assert await ws.recv() == "first"
                lost = json.loads(await asyncio.wait_for(ws.recv(), 10))
                assert lost["type"] == "error" and lost["code"] == "replica_lost"
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                assert ws.close_code == 1011
        finally:
            await asyncio.to_thread(server.stop)
