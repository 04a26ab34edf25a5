"""Dependencies: how routes reach the app's settings and engines (tests override these).

Engines live on `app.state`, set by the lifespan in services.app; each getter takes an
`HTTPConnection` so it serves HTTP and WebSocket routes alike.
"""
from __future__ import annotations

import hmac

from fastapi import Depends
from starlette.requests import HTTPConnection

from services.diffusion import DiffusionService
from services.errors import APIError
from services.llm import LLMServer
from services.metrics import ServingMetrics
from services.settings import ServerSettings


def get_settings(conn: HTTPConnection) -> ServerSettings:
    return conn.app.state.settings


def get_metrics(conn: HTTPConnection) -> ServingMetrics:
    return conn.app.state.metrics


def get_llm(conn: HTTPConnection) -> LLMServer:
    llm = getattr(conn.app.state, "llm", None)
    if llm is None:
        raise APIError(503, "the LLM engine is not running", code="llm_unavailable")
    return llm


def get_diffusion(conn: HTTPConnection) -> DiffusionService:
    diffusion = getattr(conn.app.state, "diffusion", None)
    if diffusion is None:
        raise APIError(503, "the diffusion pipeline is not running", code="diffusion_unavailable")
    return diffusion


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
