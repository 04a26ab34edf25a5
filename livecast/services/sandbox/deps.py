"""How routes reach the sandbox room (`app.state.containers`)."""
from __future__ import annotations

from starlette.requests import HTTPConnection

from livecast.services.errors import APIError
from livecast.services.sandbox.pool import ContainerPool


def get_pool(conn: HTTPConnection) -> ContainerPool:
    pool = getattr(conn.app.state, "containers", None)
    if pool is None:
        raise APIError(503, "the code interpreter is not enabled on this server (see its startup log)",
                       code="code_interpreter_disabled")
    return pool
