"""The FastAPI app: `create_app(settings)` mounts each room's routes; the lifespan owns the engines.

Rooms: `services.llm` (OpenAI/TGI/WebSocket text), `services.media` (WebRTC, frames, images),
`services.runtime` (the one loop that steps every engine on the device). Each room is switched
by its `enable_*` setting, built by an async context manager entered on the lifespan's exit
stack (stored on `app.state.<room>`), and reached by routes through the room's `deps`. /health
reports each as `app.state.<room>.health()` or null.
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from livecast.services import health
from livecast.services.auth import APIKeyGuard
from livecast.services.agents.db import open_database
from livecast.services.agents.lifespan import agents_service
from livecast.services.retrieval.routes import router as retrieval_router
from livecast.services.retrieval.service import retrieval_service
from livecast.services.agents.routes import ROUTERS as AGENTS_ROUTERS
from livecast.services.agents.tools import ToolRooms
from livecast.services.sandbox.routes import router as sandbox_router
from livecast.services.sandbox.service import containers_service
from livecast.services.errors import APIError, install_error_handlers, openapi_with_errors
from livecast.services.logs import redact_secrets
from livecast.services.llm.routes import chat, completions, generate, models, tokenize, ws
from livecast.services.llm.service import llm_service
from livecast.services.media.lifespan import media_service
from livecast.services.media.routes import frames, images, webrtc
from livecast.services.runtime.lifespan import device_runtime
from livecast.services.runtime.memory import plan_memory
from livecast.services.settings import ServerSettings

LLM_ROUTERS = (models.router, chat.router, completions.router, generate.router, tokenize.router, ws.router)
MEDIA_ROUTERS = (webrtc.router, frames.router, images.router)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: ServerSettings = app.state.settings
    registry = app.state.registry
    async with AsyncExitStack() as stack:
        # media first: on CUDA the KV cache is sized from what its models leave free
        if settings.enable_diffusion:
            app.state.diffusion = await stack.enter_async_context(media_service(settings.diffusion, registry))
        if settings.enable_llm:
            engine_config = plan_memory(settings.engine, settings.memory, app.state.diffusion)
            app.state.llm = await stack.enter_async_context(
                llm_service(engine_config, settings.llm, registry, settings.retry_after_s))
        if settings.enable_agents:
            db = open_database(settings.agents.store_url, settings.agents.data_dir)
            stack.callback(db.close)
            app.state.containers = await stack.enter_async_context(containers_service(settings.sandbox))
            app.state.retrieval = await stack.enter_async_context(retrieval_service(dataclasses.replace(
                settings.retrieval, data_dir=settings.agents.data_dir, batcher_thread=False), db, settings.retry_after_s))
            app.state.agents = await stack.enter_async_context(
                agents_service(settings.agents, app.state.llm, db, ToolRooms(app.state.containers, app.state.retrieval),
                               settings.retry_after_s))
        llm, diffusion, retrieval = app.state.llm, app.state.diffusion, app.state.retrieval
        embeddings = (retrieval.batcher,) if retrieval is not None and retrieval.batcher is not None else ()
        # entered last, so it stops first: no engine is stepped while its room closes
        app.state.runtime = await stack.enter_async_context(device_runtime(
            llm.engine if llm is not None else None, diffusion.batcher if diffusion is not None else None,
            settings.runtime, registry, others=embeddings))
        try:
            yield
        finally:
            app.state.llm = app.state.diffusion = app.state.runtime = None
            app.state.agents = app.state.containers = app.state.retrieval = None


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the app; nothing heavy happens until the lifespan starts (uvicorn, or a TestClient)."""
    settings = settings or ServerSettings()
    app = FastAPI(title="livecast", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.shell = settings.shell()  # what the rooms read (services.core), never the settings
    app.state.registry = CollectorRegistry()  # per app, never the process-global one
    app.state.llm = app.state.diffusion = app.state.runtime = None
    app.state.agents = app.state.containers = app.state.retrieval = None
    install_error_handlers(app)
    app.openapi = openapi_with_errors(app)
    redact_secrets("uvicorn.access", "uvicorn.error")
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(APIKeyGuard, api_key=settings.api_key)  # outermost: no body is read without the key
    app.include_router(health.router)
    if settings.enable_llm:
        for router in LLM_ROUTERS:
            app.include_router(router)
    if settings.enable_diffusion:
        for router in MEDIA_ROUTERS:
            app.include_router(router)
    if settings.enable_agents:
        for router in (*AGENTS_ROUTERS, sandbox_router, retrieval_router):
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
