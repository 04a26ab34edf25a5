"""WebRTC live stylization: POST /v1/webrtc/offer (aiortc's non-trickle signaling) and session admin.

The offer body carries the SDP plus the stream's starting settings; the answer carries all of the
server's candidates. Bad SDP or settings → 400; `max_video_sessions` open → 503 + Retry-After.
"""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from services.deps import get_diffusion, require_api_key
from services.diffusion import DiffusionService, ServiceBusy, param_error_name
from services.errors import APIError
from services.video import OfferError, SessionLimit

router = APIRouter(dependencies=[Depends(require_api_key)])

RETRY_AFTER_S = "5"


class StreamSettings(BaseModel):
    """Starting settings of a live stream (the same names the control messages use)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field("", max_length=2000)
    negative_prompt: str = Field("", max_length=2000)
    strength: float | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    delta: float | None = None
    t_index_list: list[int] | None = None
    num_inference_steps: int | None = None
    similarity_filter: bool | None = None

    def stream_kwargs(self, exclude: set[str] = frozenset()) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude=set(exclude))


class WebRTCOffer(StreamSettings):
    sdp: str = Field(min_length=1, max_length=200_000)
    type: Literal["offer"]
    passthrough: bool = False  # no diffusion: the transport floor (and the latency probe's baseline)


class WebRTCAnswer(BaseModel):
    sdp: str
    type: str
    session_id: str


def busy(message: str, code: str) -> APIError:
    return APIError(503, message, code=code, headers={"Retry-After": RETRY_AFTER_S})


def settings_error(exc: ValueError) -> APIError:
    return APIError(400, str(exc), param=param_error_name(str(exc)), code="invalid_settings")


@router.post("/v1/webrtc/offer", response_model=WebRTCAnswer)
async def webrtc_offer(offer: WebRTCOffer, service: DiffusionService = Depends(get_diffusion)):
    try:
        return await service.video.answer(offer.sdp, offer.type, offer.stream_kwargs({"sdp", "type", "passthrough"}),
                                          passthrough=offer.passthrough)
    except SessionLimit as exc:
        raise busy(str(exc), "too_many_sessions") from exc
    except ServiceBusy as exc:
        raise busy(str(exc), "server_overloaded") from exc
    except OfferError as exc:
        raise APIError(400, str(exc), param="sdp", code="invalid_sdp") from exc
    except ValueError as exc:
        raise settings_error(exc) from exc


@router.get("/v1/webrtc/sessions")
async def list_sessions(service: DiffusionService = Depends(get_diffusion)):
    return {"object": "list", "max_sessions": service.video.max_sessions, "data": service.video.snapshot()}


@router.delete("/v1/webrtc/sessions/{session_id}")
async def close_session(session_id: str, service: DiffusionService = Depends(get_diffusion)):
    if not await service.video.close(session_id):
        raise APIError(404, f"no video session {session_id!r}", param="session_id", code="session_not_found")
    return {"id": session_id, "object": "webrtc.session", "deleted": True}
