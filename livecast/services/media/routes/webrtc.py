"""WebRTC live stylization: POST /v1/webrtc/offer (aiortc's non-trickle signaling) and session admin.

The offer body carries the SDP plus the stream's starting settings; the answer carries all of the
server's candidates. Bad SDP or settings → 400; `max_video_sessions` open → 503 + Retry-After.
"""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from livecast.services.deps import get_shell
from livecast.services.errors import APIError
from livecast.services.media.deps import get_media, open_peer
from livecast.services.media.service import MediaService
from livecast.services.media.stream_settings import StreamSettings
from livecast.services.core import Shell
from livecast.services.projects import Project

router = APIRouter()


class WebRTCOffer(StreamSettings):
    sdp: str = Field(min_length=1, max_length=200_000)
    type: Literal["offer"]
    passthrough: bool = False  # no diffusion: the transport floor (and the latency probe's baseline)


class WebRTCAnswer(BaseModel):
    sdp: str
    type: str
    session_id: str


@router.post("/v1/webrtc/offer", response_model=WebRTCAnswer)
async def webrtc_offer(offer: WebRTCOffer, project: Project, service: MediaService = Depends(get_media),
                       shell: Shell = Depends(get_shell)):
    settings = offer.stream_kwargs({"sdp", "type", "passthrough"})
    return await open_peer(lambda: service.video.answer(offer.sdp, offer.type, settings,
                                                        passthrough=offer.passthrough, project=project), shell)


@router.get("/v1/webrtc/sessions")
async def list_sessions(project: Project, service: MediaService = Depends(get_media)):
    return {"object": "list", "max_sessions": service.video.max_sessions, "data": service.video.snapshot(project)}


@router.delete("/v1/webrtc/sessions/{session_id}")
async def close_session(session_id: str, project: Project, service: MediaService = Depends(get_media)):
    if not await service.video.close(session_id, project):
        raise APIError(404, f"no video session {session_id!r}", param="session_id", code="session_not_found")
    return {"id": session_id, "object": "webrtc.session", "deleted": True}
