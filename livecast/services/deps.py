"""Dependencies every room shares: the app's settings and the API-key check (tests override these).

Each getter takes an `HTTPConnection` so it serves HTTP and WebSocket routes alike; a room's own
engine getter lives in that room (`services.llm.deps`, `services.media.deps`).
"""
from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import Depends
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from livecast.services.errors import APIError
from livecast.services.settings import ServerSettings


def get_settings(conn: HTTPConnection) -> ServerSettings:
    return conn.app.state.settings


def api_key_error(conn: HTTPConnection, settings: ServerSettings) -> APIError | None:
    """None when the connection may proceed: no key is configured, or it sent the right one as
    `Authorization: Bearer <key>` (browsers' WebSockets, which cannot set headers, may use `?api_key=`)."""
    if settings.api_key is None:
        return None
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = conn.query_params.get("api_key", "") if conn.scope["type"] == "websocket" else ""
    if token and hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
        return None
    return APIError(401, "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def require_api_key(conn: HTTPConnection, settings: ServerSettings = Depends(get_settings)) -> None:
    error = api_key_error(conn, settings)
    if error is not None:
        raise error


def origin_error(conn: HTTPConnection, settings: ServerSettings) -> APIError | None:
    """None when a WebSocket may open: no Origin (not a browser), the page's own origin, or one
    of `--allowed-origins`. Browsers send cookies and reach loopback servers from any site, so
    without this a page elsewhere could drive a key-less server (cross-site WebSocket hijacking)."""
    origin = conn.headers.get("origin")
    if origin is None or "*" in settings.origins or origin in settings.origins:
        return None
    if urlsplit(origin).netloc == conn.headers.get("host", ""):
        return None
    return APIError(403, f"origin {origin!r} may not open WebSockets here; allow it with --allowed-origins",
                    code="origin_not_allowed")


async def admit_websocket(websocket: WebSocket, settings: ServerSettings) -> bool:
    """Check the key and the origin before accepting. A refusal is the same on every WebSocket
    route: the HTTP status (401 or 403, OpenAI-shaped body) where the server can send one, else a
    close with 1008 before the handshake completes."""
    error = api_key_error(websocket, settings) or origin_error(websocket, settings)
    if error is None:
        return True
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error.body(), status_code=error.status,
                                                          headers=error.headers))
    else:
        await websocket.close(code=1008, reason=error.code or "refused")
    return False
