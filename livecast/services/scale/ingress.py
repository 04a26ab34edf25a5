"""The ingress: one ASGI reverse proxy in front of every replica (`livecast serve --replicas N`).

Each request is read once (bodies are bounded JSON, kept so a retry can replay them), placed by
`services.scale.routing` (pool, prompt prefix, sticky ids) and sent to the first candidate. A
replica that refuses the connection, dies before answering, or answers 503 is skipped for the
next candidate, `max_tries` in all: nothing has reached the client yet, so the retry is
invisible. The response head is held back until the first body byte for the same reason. Once
bytes flowed, a cut SSE stream ends with one OpenAI-shaped `replica_lost` error event. `/health`
and `/metrics` are the ingress's own, gathered from every replica; the LoRA load/unload routes go to
every LLM replica (services.scale.broadcast).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx

from livecast.services.errors import APIError, overloaded
from livecast.services.scale.aggregate import OWN_ROUTES, send_error
from livecast.services.scale.bridge import bridge_websocket
from livecast.services.scale.broadcast import broadcast
from livecast.services.scale.config import ScaleConfig
from livecast.services.scale.pins import IdSniffer, location_id, wants_pins
from livecast.services.scale.replica import HEADER
from livecast.services.scale.routing import Replica, Router, route_key

READ_TIMEOUT_S = 600.0      # between two bytes from a replica; a wedged one is replaced by Serve before
_HOP_BY_HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te", b"trailer",
               b"proxy-authorization", b"proxy-connection"}
_RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError, httpx.ReadError,
              httpx.WriteError, httpx.PoolTimeout)

log = logging.getLogger(__name__)


def lost_event(replica_id: str) -> bytes:
    error = {"message": f"replica {replica_id} went away mid-stream; retry the request",
             "type": "server_error", "param": None, "code": "replica_lost"}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Ingress:
    """ASGI app. `poll`: an async callable returning the registry's live replica info dicts."""

    def __init__(self, scale: ScaleConfig, poll, *, max_body_bytes: int, retry_after_s: int,
                 allowed_origins: set[str] = frozenset()) -> None:
        self.scale, self._poll = scale, poll
        self.max_body_bytes, self.retry_after_s, self.origins = max_body_bytes, retry_after_s, allowed_origins
        self.router = Router(scale.routing)
        self.in_flight = 0
        self._down: dict[str, float] = {}   # replica id -> monotonic time until which it is skipped
        self.client: httpx.AsyncClient | None = None
        self._poller: asyncio.Task | None = None

    # -- the live set ---------------------------------------------------------------------------
    async def refresh(self) -> None:
        infos = await self._poll()
        now = time.monotonic()
        self._down = {rid: until for rid, until in self._down.items() if until > now}
        self.router.update(Replica(i["id"], i["kind"], i["address"], i["pid"], i["device"], i["load"])
                           for i in infos if i["id"] not in self._down)

    def mark_down(self, replica_id: str) -> None:
        """Skip a replica that failed a connection until its heartbeat has had time to age out."""
        self._down[replica_id] = time.monotonic() + 3 * self.scale.heartbeat_s
        self.router.update(r for r in self.router.replicas if r.id != replica_id)

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("could not read the replica registry: %s", exc)
            await asyncio.sleep(self.scale.heartbeat_s)

    async def startup(self) -> None:
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(
            READ_TIMEOUT_S, connect=self.scale.connect_timeout_s, pool=self.scale.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.scale.max_inflight, max_keepalive_connections=64))
        await self.refresh()
        self._poller = asyncio.create_task(self._poll_forever())

    async def shutdown(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        if self.client is not None:
            await self.client.aclose()

    # -- ASGI -----------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if self.in_flight >= self.scale.max_inflight:
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1013, "reason": "ingress at capacity"})
            return await send_error(send, overloaded("the ingress is at capacity; retry later", self.retry_after_s))
        self.in_flight += 1
        try:
            if scope["type"] == "websocket":
                return await bridge_websocket(self, scope, receive, send)
            path = scope["path"]
            own = OWN_ROUTES.get((scope["method"], path))
            if own is not None:
                return await own(self, scope, send)
            await self._proxy(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _read_body(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                raise APIError(413, f"request body is larger than {self.max_body_bytes} bytes", code="request_too_large")
            if not message.get("more_body"):
                return b"".join(chunks)

    def forward_headers(self, scope) -> list[tuple[bytes, bytes]]:
        client = scope.get("client") or ("", 0)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP and k.lower() != b"content-length"]
        return headers + [(b"x-forwarded-for", str(client[0]).encode())]

    def candidates(self, key) -> list[Replica]:
        return self.router.candidates(key)[:self.scale.max_tries]

    # -- HTTP proxy -----------------------------------------------------------------------------
    async def _proxy(self, scope, receive, send) -> None:
        try:
            body = await self._read_body(receive)
        except APIError as error:
            return await send_error(send, error)
        if body is None:
            return
        method, path = scope["method"], scope["path"]
        key = route_key(method, path, body)
        query = scope.get("query_string", b"")
        target = scope.get("raw_path", path.encode()).decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = self.forward_headers(scope)
        if key.broadcast:  # run to the end even if the client leaves: replicas must not diverge
            return await broadcast(self, self.router.members(key.pool), method, path, target, headers, body, send)
        candidates = self.candidates(key)
        if not candidates:
            return await send_error(send, overloaded(f"no live {key.pool} replica; retry later", self.retry_after_s))
        # a client that hangs up cancels the proxying, which closes the replica's connection: the
        # replica then aborts the generation instead of running it for nobody
        work = asyncio.create_task(self._attempts(candidates, method, path, target, headers, body, send))
        gone = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, gone):
                task.cancel()
            await asyncio.wait((work, gone))  # the upstream connection is closed before we return
        if not work.cancelled():
            work.result()  # re-raise: a cut plain body must abort the client's connection

    async def _attempts(self, candidates, method, path, target, headers, body, send) -> None:
        for attempt, replica in enumerate(candidates):
            last_try = attempt == len(candidates) - 1
            self.router.begin(replica.id)
            try:
                if await self._try(replica, method, path, target, headers, body, send, last_try):
                    return
            finally:
                self.router.end(replica.id)
        await send_error(send, overloaded(f"{len(candidates)} replicas failed this request; retry later",
                                           self.retry_after_s))

    async def _try(self, replica: Replica, method, path, target, headers, body, send, last_try) -> bool:
        """True when the response (or the error event) reached the client; False to try the next."""
        request = self.client.build_request(method, replica.address + target, headers=headers, content=body)
        try:
            response = await self.client.send(request, stream=True)
        except _RETRYABLE as exc:
            log.warning("replica %s failed before answering (%s); trying the next", replica.id, type(exc).__name__)
            self.mark_down(replica.id)
            return False
        try:
            if response.status_code == 503 and not last_try:
                return False
            chunks = response.aiter_raw()
            try:
                first = await anext(chunks, b"")
            except _RETRYABLE:
                self.mark_down(replica.id)
                return False  # dead before its first byte: the client saw nothing, retry
            sniffer = IdSniffer(response.headers.get("content-type", "")) if wants_pins(method, path) else None
            stream_id = location_id(method, path, response.status_code, response.headers.get("location"))
            if stream_id is not None:
                self.router.pin(stream_id, replica.id)
            out = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
            if not any(k.lower() == HEADER for k, _ in out):
                out.append((HEADER, replica.id.encode()))
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            chunk = first
            try:
                while True:
                    if sniffer is not None:
                        for sticky_id in sniffer.feed(chunk):
                            self.router.pin(sticky_id, replica.id)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        break
            except _RETRYABLE:
                self.mark_down(replica.id)
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    await send({"type": "http.response.body", "body": lost_event(replica.id), "more_body": False})
                    return True
                raise  # a cut plain body: the client's connection is aborted, never a silent truncation
            if sniffer is not None:
                for sticky_id in sniffer.done():
                    self.router.pin(sticky_id, replica.id)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return True
        finally:
            await response.aclose()
