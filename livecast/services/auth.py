"""The API key is a property of the app, not of each router: one ASGI middleware answers 401 on
every route, every method, HTTP and WebSocket alike, unless the request is on the allow-list:
`OPEN_PATHS`, and the pages (GETs that no route claims, which fall through to web/).

A route added later is guarded without saying so; only this module opens one."""
from __future__ import annotations

import hmac

from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.routing import Match
from starlette.websockets import WebSocket

from livecast.services.errors import APIError

OPEN_PATHS = frozenset({"/health", "/metrics"})


def api_key_error(conn: HTTPConnection, api_key: str | None) -> APIError | None:
    """None when the connection may proceed: no key is configured, or it sent the right one as
    `Authorization: Bearer <key>` (browsers' WebSockets, which cannot set headers, may use `?api_key=`)."""
    if api_key is None:
        return None
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = conn.query_params.get("api_key", "") if conn.scope["type"] == "websocket" else ""
    if token and hmac.compare_digest(token.strip().encode(), api_key.encode()):
        return None
    return APIError(401, "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def deny_websocket(websocket: WebSocket, error: APIError) -> None:
    """The HTTP status (OpenAI-shaped body) where the server can send one before the handshake,
    else a close with 1008."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error.body(), status_code=error.status,
                                                          headers=error.headers))
    else:
        await websocket.close(code=1008, reason=error.code or "refused")


def is_open(scope) -> bool:
    if scope["path"] in OPEN_PATHS:
        return True
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return False
    return all(route.matches(scope)[0] is Match.NONE for route in scope["app"].router.routes)


class APIKeyGuard:
    """ASGI middleware: the key check before anything else reads the request."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send) -> None:
        if self.api_key is not None and scope["type"] in ("http", "websocket") and not is_open(scope):
            error = api_key_error(HTTPConnection(scope), self.api_key)
            if error is not None:
                if scope["type"] == "websocket":
                    return await deny_websocket(WebSocket(scope, receive, send), error)
                response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
