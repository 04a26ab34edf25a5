"""How media routes reach the media room's service (tests override this with dependency_overrides)."""
from __future__ import annotations

from starlette.requests import HTTPConnection

from livecast.services.core import Shell
from livecast.services.errors import APIError, overloaded
from livecast.services.media.peer import OfferError, SessionLimit
from livecast.services.media.service import MediaService, ServiceBusy
from livecast.services.media.stream_settings import param_error_name


def get_media(conn: HTTPConnection) -> MediaService:
    media = getattr(conn.app.state, "media", None)
    if media is None:
        raise APIError(503, "the diffusion pipeline is not running", code="diffusion_unavailable")
    return media


def settings_error(exc: ValueError) -> APIError:
    """A 400 for a bad stream setting, naming it."""
    return APIError(400, str(exc), param=param_error_name(str(exc)), code="invalid_settings")


async def open_peer(make, shell: Shell):
    """`await make()` (answering an offer), its failures as the API's errors: a limit or busy
    streams → 503 + Retry-After, a bad offer → 400 `sdp`, a bad setting → 400 naming it."""
    try:
        return await make()
    except SessionLimit as exc:
        raise overloaded(str(exc), shell.retry_after_s, "too_many_sessions") from exc
    except ServiceBusy as exc:
        raise overloaded(str(exc), shell.retry_after_s) from exc
    except OfferError as exc:
        raise APIError(400, str(exc), param="sdp", code="invalid_sdp") from exc
    except ValueError as exc:
        raise settings_error(exc) from exc
