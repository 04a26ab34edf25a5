"""The settable fields of a live stream: one model for HTTP bodies, the WebRTC control channel and
WebSocket frame configs. Types are checked here; ranges by streamdiff's StreamParams, whose
messages start with the field name (so errors name the parameter)."""
from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from livecast.services.request_base import EdgeModel


class StreamSettings(EdgeModel):
    """Starting settings of a stream, or a partial update of them (only the fields sent apply)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: str = Field("", max_length=2000)
    negative_prompt: str = Field("", max_length=2000)
    strength: float | None = None
    seed: int | None = None
    guidance_scale: float | None = None
    delta: float | None = None
    t_index_list: list[int] | None = None
    num_inference_steps: int | None = None
    similarity_filter: bool | None = None

    @classmethod
    def changes(cls, values: dict[str, Any]) -> dict[str, Any]:
        """`values` checked as a partial update: ValueError naming the first unknown field (in
        name order), else the first mistyped one. Ranges are left to StreamParams."""
        try:
            checked = cls.model_validate(values)
        except ValidationError as exc:
            errors = exc.errors()
            unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
            if unknown:
                raise ValueError(f"{unknown[0]} is not a stream setting; settable: {list(SETTABLE)}") from None
            err = errors[0]
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            raise ValueError(f"{name} {err['msg'][0].lower()}{err['msg'][1:]}") from None
        return checked.model_dump(include=set(values))

    def stream_kwargs(self, exclude: set[str] = frozenset()) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude=set(exclude))


SETTABLE = tuple(StreamSettings.model_fields)


def param_error_name(message: str) -> str | None:
    """The setting a ValueError is about (streamdiff's messages and ours start with the field name)."""
    first = message.split(" ", 1)[0].split("=", 1)[0].split(".", 1)[0]
    return first if first in SETTABLE or first in ("width", "height") else None
