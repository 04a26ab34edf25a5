"""The FastAPI app: `create_app(settings)` wires routers, errors and metrics; the lifespan owns engines.

Each side of the server (LLM, diffusion) is three things, added the same way:
its flag in ServerSettings (`enable_*`), an async context manager that builds and tears down its
engine (entered on the lifespan's exit stack and stored on `app.state.<side>`), and its routers,
mounted only when the side is enabled. Routes reach a side through a getter in services.deps;
/health reports each side as `app.state.<side>.health()` or null.
"""
from __future__ import annotations

import json
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.diffusion import diffusion_server
from services.errors import APIError, install_error_handlers
from services.llm import llm_server
from services.metrics import ServingMetrics
from services.device import device_runtime, plan_memory
from services.routers import chat, completions, frames, health, images, models, tgi, webrtc, ws
from services.settings import ServerSettings

LLM_ROUTERS = (models.router, chat.router, completions.router, tgi.router, ws.router)
DIFFUSION_ROUTERS = (webrtc.router, frames.router, images.router)
WEB_DIR = Path(__file__).resolve().parent.parent / "web"


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings: ServerSettings = app.state.settings
    async with AsyncExitStack() as stack:
        # diffusion first: on CUDA the KV cache is sized from what its models leave free
        if settings.enable_diffusion:
            app.state.diffusion = await stack.enter_async_context(
                diffusion_server(settings.diffusion_config(), app.state.metrics.registry))
        if settings.enable_llm:
            settings = plan_memory(settings, app.state.diffusion)
            app.state.llm = await stack.enter_async_context(llm_server(settings, app.state.metrics))
        app.state.runtime = await stack.enter_async_context(
            device_runtime(app.state.llm, app.state.diffusion, settings.runtime_policy(), app.state.metrics.registry))
        try:
            yield
        finally:
            app.state.llm = app.state.diffusion = app.state.runtime = None


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    """Build the app; nothing heavy happens until the lifespan starts (uvicorn, or a TestClient)."""
    settings = settings or ServerSettings()
    app = FastAPI(title="livecast", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = ServingMetrics()
    app.state.llm = app.state.diffusion = app.state.runtime = None
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(health.router)
    if settings.enable_llm:
        for router in LLM_ROUTERS:
            app.include_router(router)
    if settings.enable_diffusion:
        for router in DIFFUSION_ROUTERS:
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
