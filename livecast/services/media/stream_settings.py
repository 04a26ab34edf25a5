"""The settable fields of a live stream: one model for HTTP bodies, the WebRTC control channel and
WebSocket frame configs. Types are checked here; ranges by streamdiff's StreamParams, whose
messages start with the field name (so errors name the parameter)."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, ValidationError

from livecast.services.request_base import EdgeModel
from livecast.streamdiff.config import StreamParams

PromptText = Annotated[str, Field(max_length=2000)]


class PromptEntry(EdgeModel):
    """One prompt of a blend; weights are relative (the conditioning is their normalised sum)."""

    model_config = ConfigDict(extra="forbid")

    text: PromptText
    weight: float


class SeedEntry(EdgeModel):
    """One seed of a blend; noise = sum(weight * noise(seed)) / sqrt(sum(weight ** 2))."""

    model_config = ConfigDict(extra="forbid")

    seed: int
    weight: float


class StreamSettings(EdgeModel):
    """Starting settings of a stream, or a partial update of them (only the fields sent apply).

    `prompt` and `seed` may be weighted lists (blends, at most 8 entries); `temporal_blend` in
    [0, 0.9] smooths the output over time (0: off); `lora` picks a style LoRA the server was
    started with (`--diffusion-loras`; null: none) at `lora_scale`; `controlnet_scale` weighs the
    ControlNet the server was started with (`--diffusion-controlnet`; null: 1 on frames with an
    input, 0: off) on the input's canny edges (`canny_low`, `canny_high`). StreamParams checks the
    ranges, the pipeline the adapter's name and that a ControlNet is loaded.
    """

    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: PromptText | list[PromptEntry] = ""
    negative_prompt: str = Field("", max_length=2000)
    strength: float | None = None
    seed: int | list[SeedEntry] | None = None
    guidance_scale: float | None = None
    delta: float | None = None
    t_index_list: list[int] | None = None
    num_inference_steps: int | None = None
    similarity_filter: bool | None = None
    temporal_blend: float | None = None
    lora: str | None = Field(None, max_length=64)  # a --diffusion-loras name; null: none
    lora_scale: float | None = None
    controlnet_scale: float | None = None
    canny_low: float | None = None
    canny_high: float | None = None

    @classmethod
    def changes(cls, values: dict[str, Any]) -> dict[str, Any]:
        """`values` checked as a partial update: ValueError naming the first unknown field (in
        name order), else the first mistyped one. Ranges are left to StreamParams."""
        try:
            checked = cls.model_validate(values)
        except ValidationError as exc:
            errors = exc.errors()
            unknown = sorted(str(e["loc"][0]) for e in errors
                             if e["type"] == "extra_forbidden" and len(e["loc"]) == 1)
            if unknown:
                raise ValueError(f"{unknown[0]} is not a stream setting; settable: {list(SETTABLE)}") from None
            # A union (prompt, seed) reports one error per member: keep the member the value got
            # furthest into (a list with a bad entry), and leave the members' names out.
            first = errors[0]["loc"][:1]
            err = max((e for e in errors if e["loc"][:1] == first), key=lambda e: len(e["loc"]))
            name = ".".join(str(p) for p in err["loc"] if not _union_member(p)) or "settings"
            raise ValueError(f"{name} {err['msg'][0].lower()}{err['msg'][1:]}") from None
        return checked.model_dump(include=set(values))

    def stream_kwargs(self, exclude: set[str] = frozenset()) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude=set(exclude))


SETTABLE = tuple(StreamSettings.model_fields)


def _union_member(part: Any) -> bool:
    return isinstance(part, str) and (part in ("str", "int", "constrained-str") or "[" in part)


def settings_json(params: StreamParams) -> dict[str, Any]:
    """The settable part of a stream's params as plain JSON values, in the form StreamSettings
    accepts back: blends as lists of {text|seed, weight}."""
    values = {name: getattr(params, name) for name in SETTABLE}
    if values["t_index_list"] is not None:
        values["t_index_list"] = list(values["t_index_list"])
    for name in ("prompt", "seed"):
        if isinstance(values[name], tuple):
            values[name] = [entry._asdict() for entry in values[name]]
    return values


def param_error_name(message: str) -> str | None:
    """The setting a ValueError is about (streamdiff's messages and ours start with the field name)."""
    first = message.split(" ", 1)[0].split("=", 1)[0].split(".", 1)[0]
    return first if first in SETTABLE or first in ("width", "height") else None
