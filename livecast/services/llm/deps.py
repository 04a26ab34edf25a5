"""How LLM routes reach the LLM service (tests override this with dependency_overrides)."""
from __future__ import annotations

from starlette.requests import HTTPConnection

from livecast.services.errors import APIError
from livecast.services.llm.service import LLMService


def get_llm(conn: HTTPConnection) -> LLMService:
    llm = getattr(conn.app.state, "llm", None)
    if llm is None:
        raise APIError(503, "the LLM engine is not running", code="llm_unavailable")
    return llm
