"""WebSocket bridging for the ingress: one client socket <-> one replica socket, for its whole life.

A WebSocket is sticky by nature: every generation multiplexed on it runs on the replica it
opened to. The replica is chosen (and retried, if it refuses the connection) before the client's
handshake is answered; a refusal by the replica (401, 403, 1013) is relayed as is. The ingress
checks the Origin itself (with the app's own rule, against the client's Host) and drops the
header, because the replica would compare it with its own loopback address. If the replica dies,
the client gets one `{"type": "error", "code": "replica_lost"}` message and a 1011 close.
"""
from __future__ import annotations

import asyncio
import json
import logging

import websockets
from starlette.requests import HTTPConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from livecast.services.deps import origin_error
from livecast.services.scale.routing import route_key

_DROPPED = {b"host", b"origin", b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version",
            b"sec-websocket-extensions", b"sec-websocket-protocol", b"content-length"}

log = logging.getLogger(__name__)


async def _deny(send, scope, status: int, body: bytes, headers: list) -> None:
    """Refuse the handshake: with the HTTP status where the server can send one, else close 1008."""
    if "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008 if status in (401, 403) else 1013})


async def bridge_websocket(ingress, scope, receive, send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    error = origin_error(HTTPConnection(scope), ingress.origins)
    if error is not None:
        return await _deny(send, scope, error.status, json.dumps(error.body()).encode(),
                           [(b"content-type", b"application/json")])
    path, query = scope["path"], scope.get("query_string", b"").decode("latin-1")
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in ingress.forward_headers(scope)
               if k.lower() not in _DROPPED]
    upstream = replica = None
    for replica in ingress.candidates(route_key("GET", path, None)):
        url = replica.address.replace("http://", "ws://", 1) + path + (f"?{query}" if query else "")
        try:
            upstream = await websockets.connect(
                url, additional_headers=headers, subprotocols=scope.get("subprotocols") or None,
                open_timeout=ingress.scale.connect_timeout_s, max_size=ingress.max_body_bytes,
                ping_interval=None, compression=None)
            break
        except InvalidStatus as exc:  # the replica answered the handshake with a refusal: relay it
            answer = exc.response
            return await _deny(send, scope, answer.status_code, answer.body or b"",
                               [(k.lower().encode(), v.encode()) for k, v in answer.headers.raw_items()
                                if k.lower() in ("content-type", "www-authenticate", "retry-after")])
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            log.warning("replica %s refused a WebSocket (%s); trying the next", replica.id, exc)
            ingress.mark_down(replica.id)
    if upstream is None:
        return await send({"type": "websocket.close", "code": 1013, "reason": "no live replica"})
    accept = {"type": "websocket.accept", "headers": [(b"x-livecast-replica", replica.id.encode())]}
    if upstream.subprotocol:
        accept["subprotocol"] = upstream.subprotocol
    await send(accept)
    ingress.router.begin(replica.id)
    try:
        await _pump(upstream, receive, send, replica.id)
    finally:
        ingress.router.end(replica.id)


async def _pump(upstream, receive, send, replica_id: str) -> None:
    async def to_replica() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await upstream.close()
                return
            data = message.get("text") if message.get("text") is not None else message.get("bytes")
            await upstream.send(data)

    async def to_client() -> None:
        try:
            async for data in upstream:
                key = "text" if isinstance(data, str) else "bytes"
                await send({"type": "websocket.send", key: data})
        except ConnectionClosed:
            pass
        close = upstream.protocol.close_rcvd
        if close is None:  # the connection dropped without a close frame: the replica's process is gone
            lost = {"type": "error", "code": "replica_lost",
                    "message": f"replica {replica_id} went away; reconnect to continue"}
            await send({"type": "websocket.send", "text": json.dumps(lost)})
            await send({"type": "websocket.close", "code": 1011, "reason": "replica lost"})
            return
        code = 1000 if close.code in (1005, 1006) else close.code  # "no status" cannot be sent on
        await send({"type": "websocket.close", "code": code, "reason": close.reason})

    tasks = [asyncio.create_task(to_replica()), asyncio.create_task(to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, ConnectionClosed):
                pass
            except Exception:  # the client went away mid-send, or a bug: never lose it silently
                log.warning("WebSocket bridge to replica %s ended with an error", replica_id, exc_info=True)
        await upstream.close()
