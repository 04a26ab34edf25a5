"""The API key is a property of the app, not of each router: one ASGI middleware answers 401 on
every route, every method, HTTP and WebSocket alike, unless the request is on the allow-list:
`OPEN_PATHS`, and the pages (GETs that no route claims, which fall through to web/).

A route added later is guarded without saying so; only this module opens one. The key also says
the request's project (services.projects): the guard leaves it in the scope for `Project`."""
from __future__ import annotations

import hmac
from collections.abc import Mapping

from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.routing import Match
from starlette.websockets import WebSocket

from livecast.services.errors import APIError
from livecast.services.projects import DEFAULT_PROJECT, SCOPE_KEY

OPEN_PATHS = frozenset({"/health", "/metrics"})


def key_project(conn: HTTPConnection, keys: Mapping[str, str]) -> str | None:
    """The project of the key the connection sent as `Authorization: Bearer <key>` (browsers'
    WebSockets, which cannot set headers, may use `?api_key=`); None for no key or a wrong one.
    Every key is compared, in constant time each, so the time taken says nothing of which matched."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = conn.query_params.get("api_key", "") if conn.scope["type"] == "websocket" else ""
    sent, found = token.strip().encode(), None
    for key, project in keys.items():
        if hmac.compare_digest(sent, key.encode()) and sent:
            found = project
    return found


INVALID_KEY = APIError(401, "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
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
    """ASGI middleware: the key check before anything else reads the request; it puts the key's
    project in the scope (`default` when the server needs no key)."""

    def __init__(self, app, keys: Mapping[str, str]) -> None:
        self.app, self.keys = app, dict(keys)  # key -> project; empty: no key needed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            if not self.keys:
                scope[SCOPE_KEY] = DEFAULT_PROJECT
            elif not is_open(scope):
                project = key_project(HTTPConnection(scope), self.keys)
                if project is None:
                    if scope["type"] == "websocket":
                        return await deny_websocket(WebSocket(scope, receive, send), INVALID_KEY)
                    response = JSONResponse(INVALID_KEY.body(), status_code=401, headers=INVALID_KEY.headers)
                    return await response(scope, receive, send)
                scope[SCOPE_KEY] = project
        await self.app(scope, receive, send)
