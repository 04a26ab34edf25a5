"""The FastAPI app: `create_app(settings)` walks the table of rooms (services.rooms), mounting
the routers of each room that is on; the lifespan starts their services in the table's order and
stops them in reverse. Each room's service lands on `app.state.<room>` (None when off) and routes
reach it through the room's `deps`. /health reports the engines' rooms and the runtime.
"""
from __future__ import annotations

import json
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from livecast.services import health
from livecast.services.auth import APIKeyGuard
from livecast.services.errors import APIError, install_error_handlers, openapi_with_errors
from livecast.services.logs import redact_secrets
from livecast.services.rooms import ROOMS
from livecast.services.settings import ServerSettings

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: ServerSettings = app.state.settings
    async with AsyncExitStack() as stack:
        for room in ROOMS:
            if room.enabled(settings):
                setattr(app.state, room.name, await stack.enter_async_context(room.start(settings, app.state)))
        try:
            yield
        finally:
            for room in ROOMS:
                setattr(app.state, room.name, None)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the app; nothing heavy happens until the lifespan starts (uvicorn, or a TestClient)."""
    settings = settings or ServerSettings()
    app = FastAPI(title="livecast", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    shell = app.state.shell = settings.shell()  # what the rooms read (services.core), never the settings
    app.state.registry = CollectorRegistry()  # per app, never the process-global one
    for room in ROOMS:
        setattr(app.state, room.name, None)
    install_error_handlers(app)
    app.openapi = openapi_with_errors(app)
    redact_secrets("uvicorn.access", "uvicorn.error")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(APIKeyGuard, keys=shell.api_keys)  # outermost: no body is read without the key
    app.include_router(health.router)
    for room in ROOMS:
        if room.enabled(settings):
            for router in room.routers:
                app.include_router(router)
    app.router.default = _web_pages(app.router.default)
    return app


def _web_pages(not_found):
    """web/ served at `/` for GETs no route claims. As the router's fallback rather than a mount,
    it never shadows an API route: a wrong method still gets 405 and an unknown path 404."""
    pages = StaticFiles(directory=WEB_DIR, html=True)

    async def serve(scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            return await pages(scope, receive, send)
        return await not_found(scope, receive, send)

    return serve


class BodyLimitMiddleware:
    """413 for an HTTP request body over `max_bytes`, by Content-Length or as it streams in."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await self._reject(send)
            return await self.app(scope, receive, send)
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            return await self.app(scope, receive, send)
        # chunked: read the whole body (we would anyway, it is JSON) and replay it
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        error = APIError(413, f"request body is larger than {self.max_bytes} bytes", code="request_too_large")
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
