"""Dependencies every room shares: the shell's values (services.core) and the WebSocket origin
check (tests override these). The API key is checked for every route by the app itself
(services.auth).

Each getter takes an `HTTPConnection` so it serves HTTP and WebSocket routes alike; a room's own
engine getter lives in that room (`services.llm.deps`, `services.media.deps`).
"""
from __future__ import annotations

from collections.abc import Collection
from urllib.parse import urlsplit

from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from livecast.services.auth import deny_websocket
from livecast.services.core import Shell
from livecast.services.errors import APIError


def get_shell(conn: HTTPConnection) -> Shell:
    return conn.app.state.shell


def origin_error(conn: HTTPConnection, origins: Collection[str]) -> APIError | None:
    """None when a WebSocket may open: no Origin (not a browser), the page's own origin, or one
    of `--allowed-origins`. Browsers send cookies and reach loopback servers from any site, so
    without this a page elsewhere could drive a key-less server (cross-site WebSocket hijacking)."""
    origin = conn.headers.get("origin")
    if origin is None or "*" in origins or origin in origins:
        return None
    if urlsplit(origin).netloc == conn.headers.get("host", ""):
        return None
    return APIError(403, f"origin {origin!r} may not open WebSockets here; allow it with --allowed-origins",
                    code="origin_not_allowed")


async def admit_websocket(websocket: WebSocket, shell: Shell) -> bool:
    """Check the origin before accepting (the key was checked by the app's guard, services.auth).
    A refusal is the same on every WebSocket route: 403 where the server can send one, else a
    close with 1008 before the handshake completes."""
    error = origin_error(websocket, shell.origins)
    if error is None:
        return True
    await deny_websocket(websocket, error)
    return False
