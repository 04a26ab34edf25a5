"""WHIP in (RFC 9725), WHEP out, and the streams they make.

- `POST /v1/whip` takes an SDP offer (`application/sdp`) from a publisher (OBS Studio 30+, GStreamer's
  `whipsink`, ffmpeg) and answers `201 Created` with the SDP answer and the session's `Location`;
  `PATCH` there adds trickled ICE candidates (`application/trickle-ice-sdpfrag`), `DELETE` ends it.
  The stream's starting settings come from the query (`?prompt=...&strength=0.6`) and/or a JSON
  object in the `Livecast-Settings` header (the header wins); they change later over
  `PATCH /v1/streams/{id}`.
- `POST /v1/whep/{stream_id}` attaches a viewer to a stream's stylized output, the same way.
- `GET /v1/streams` lists the sources and their viewers.
The server's API key is the WHIP/WHEP bearer token (the app-wide guard checks it); a stream
belongs to its key's project, and another project's key finds no such stream (404).
"""
from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request, Response

from livecast.services.core import Shell
from livecast.services.deps import get_shell
from livecast.services.errors import APIError
from livecast.services.media.broadcast import UnknownStream
from livecast.services.media.deps import get_media, open_peer, settings_error
from livecast.services.media.service import MediaService
from livecast.services.media.stream_settings import StreamSettings
from livecast.services.media.peer import check_offer
from livecast.services.projects import Project

router = APIRouter()

MAX_SDP_BYTES = 200_000
SETTINGS_HEADER = "livecast-settings"


async def _body(request: Request, content_type: str, what: str) -> str:
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != content_type:
        raise APIError(415, f"{what} must be sent as {content_type}, got {given or 'no content type'}",
                       param="content-type", code="unsupported_media_type")
    raw = await request.body()
    if len(raw) > MAX_SDP_BYTES:
        raise APIError(413, f"{what} is {len(raw)} bytes; at most {MAX_SDP_BYTES}", code="sdp_too_large")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(400, f"{what} is not UTF-8 text", param="sdp", code="invalid_sdp") from None


def _settings(request: Request) -> dict:
    """Starting settings: the query's fields, then the Livecast-Settings header's JSON object."""
    values: dict = dict(request.query_params)
    header = request.headers.get(SETTINGS_HEADER)
    if header:
        try:
            extra = json.loads(header)
        except ValueError:
            raise APIError(400, f"the {SETTINGS_HEADER} header is not JSON", param=SETTINGS_HEADER,
                           code="invalid_settings") from None
        if not isinstance(extra, dict):
            raise APIError(400, f"the {SETTINGS_HEADER} header must be a JSON object", param=SETTINGS_HEADER,
                           code="invalid_settings")
        values.update(extra)
    try:
        return StreamSettings.changes(values)
    except ValueError as exc:
        raise settings_error(exc) from exc


def _created(answer: str, location: str) -> Response:
    return Response(answer, status_code=201, media_type="application/sdp",
                    headers={"Location": location, "Access-Control-Expose-Headers": "Location"})


async def _open(make, shell: Shell):
    try:
        return await open_peer(make, shell)
    except UnknownStream as exc:
        raise _not_found(exc) from None


def _not_found(exc: KeyError) -> APIError:
    return APIError(404, exc.args[0], param="stream_id", code="stream_not_found")


async def _trickle(peer_of, request: Request) -> Response:
    fragment = await _body(request, "application/trickle-ice-sdpfrag", "the ICE fragment")
    try:
        peer = peer_of()
        await peer.add_candidates(fragment)
    except UnknownStream as exc:
        raise _not_found(exc) from None
    except ValueError as exc:
        raise APIError(400, str(exc), param="candidate", code="invalid_candidate") from None
    return Response(status_code=204)


# -- WHIP ------------------------------------------------------------------------------------------
@router.post("/v1/whip", status_code=201, response_class=Response)
async def whip_publish(request: Request, project: Project, service: MediaService = Depends(get_media),
                       shell: Shell = Depends(get_shell)):
    sdp = await _body(request, "application/sdp", "the WHIP offer")
    settings = _settings(request)

    async def publish():
        check_offer(sdp)  # before anything is allocated
        source, answer = await service.broadcasts.publish(sdp, settings, project)
        return _created(answer, f"/v1/whip/{source.id}")
    return await _open(publish, shell)


@router.patch("/v1/whip/{stream_id}", status_code=204, response_class=Response)
async def whip_trickle(stream_id: str, request: Request, project: Project,
                       service: MediaService = Depends(get_media)):
    return await _trickle(lambda: service.broadcasts.get(stream_id, project), request)


@router.delete("/v1/whip/{stream_id}")
async def whip_stop(stream_id: str, project: Project, service: MediaService = Depends(get_media)):
    try:
        await service.broadcasts.get(stream_id, project).close()
    except UnknownStream as exc:
        raise _not_found(exc) from None
    return {"id": stream_id, "object": "stream", "deleted": True}


# -- WHEP ------------------------------------------------------------------------------------------
@router.post("/v1/whep/{stream_id}", status_code=201, response_class=Response)
async def whep_watch(stream_id: str, request: Request, project: Project, service: MediaService = Depends(get_media),
                     shell: Shell = Depends(get_shell)):
    sdp = await _body(request, "application/sdp", "the WHEP offer")

    async def watch():
        service.broadcasts.get(stream_id, project)  # 404 before the offer is looked at
        check_offer(sdp)
        viewer, answer = await service.broadcasts.watch(stream_id, sdp, project)
        return _created(answer, f"/v1/whep/{stream_id}/{viewer.id}")
    return await _open(watch, shell)


@router.patch("/v1/whep/{stream_id}/{viewer_id}", status_code=204, response_class=Response)
async def whep_trickle(stream_id: str, viewer_id: str, request: Request, project: Project,
                       service: MediaService = Depends(get_media)):
    return await _trickle(lambda: service.broadcasts.viewer(stream_id, viewer_id, project), request)


@router.delete("/v1/whep/{stream_id}/{viewer_id}")
async def whep_stop(stream_id: str, viewer_id: str, project: Project, service: MediaService = Depends(get_media)):
    try:
        await service.broadcasts.viewer(stream_id, viewer_id, project).close()
    except UnknownStream as exc:
        raise _not_found(exc) from None
    return {"id": viewer_id, "object": "stream.viewer", "deleted": True}


# -- streams ---------------------------------------------------------------------------------------
@router.get("/v1/streams")
async def list_streams(project: Project, service: MediaService = Depends(get_media)):
    broadcasts = service.broadcasts
    return {"object": "list", "max_sources": broadcasts.max_sources, "max_viewers": broadcasts.max_viewers,
            "data": broadcasts.snapshot(project)}


@router.get("/v1/streams/{stream_id}")
async def retrieve_stream(stream_id: str, project: Project, service: MediaService = Depends(get_media)):
    try:
        return service.broadcasts.get(stream_id, project).info()
    except UnknownStream as exc:
        raise _not_found(exc) from None


@router.patch("/v1/streams/{stream_id}")
async def update_stream(stream_id: str, changes: dict, project: Project, service: MediaService = Depends(get_media)):
    """Change a live stream's settings from its next frame on (the body: any StreamSettings fields)."""
    try:
        source = service.broadcasts.get(stream_id, project)
        service.update_stream(source.stream_id, **changes)
    except UnknownStream as exc:
        raise _not_found(exc) from None
    except KeyError:  # closing: its batcher stream is gone
        raise _not_found(UnknownStream(f"no stream {stream_id!r}")) from None
    except ValueError as exc:
        raise settings_error(exc) from exc
    return source.info()
