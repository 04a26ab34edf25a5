"""How media routes reach the media room's service (tests override this with dependency_overrides)."""
from __future__ import annotations

from starlette.requests import HTTPConnection

from livecast.services.errors import APIError
from livecast.services.media.service import MediaService
from livecast.services.media.stream_settings import param_error_name


def get_media(conn: HTTPConnection) -> MediaService:
    media = getattr(conn.app.state, "media", None)
    if media is None:
        raise APIError(503, "the diffusion pipeline is not running", code="diffusion_unavailable")
    return media


def settings_error(exc: ValueError) -> APIError:
    """A 400 for a bad stream setting, naming it."""
    return APIError(400, str(exc), param=param_error_name(str(exc)), code="invalid_settings")
