"""How agent routes reach the agents room (`app.state.agents`): always as the request's project
sees it (services.projects)."""
from __future__ import annotations

from starlette.requests import HTTPConnection

from livecast.services.errors import APIError
from livecast.services.projects import Project


def get_agents(conn: HTTPConnection, project: Project):
    agents = getattr(conn.app.state, "agents", None)
    if agents is None:
        raise APIError(503, "the agents room is not running (it needs the LLM)", code="agents_unavailable")
    return agents.for_project(project)
