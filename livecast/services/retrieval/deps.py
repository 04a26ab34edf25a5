"""How routes reach the retrieval room (`app.state.retrieval`): as the request's project sees it."""
from __future__ import annotations

from livecast.services.errors import APIError
from livecast.services.projects import current_project
from livecast.services.retrieval.service import RetrievalService


def get_retrieval(request) -> RetrievalService:
    """The running service for a route, scoped to the request's project; 503 where the app was
    built without one."""
    service = getattr(request.app.state, "retrieval", None)
    if service is None:
        raise APIError(503, "retrieval (files, embeddings, vector stores) is not running on this server",
                       code="retrieval_unavailable")
    return service.for_project(current_project(request))
