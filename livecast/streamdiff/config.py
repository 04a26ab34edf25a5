"""Per-stream generation settings, validated once so the hot path never re-checks them."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

CFG_TYPES = ("none", "full", "self", "initialize")
SCHEDULES = ("turbo", "lcm")
MAX_TRAIN_TIMESTEPS = 1000
MAX_BLEND = 8  # entries of a weighted prompt or seed list
MAX_TEMPORAL_BLEND = 0.9  # beyond this the output barely follows the input
MAX_LORA_SCALE = 4.0  # lora_scale multiplies the adapter's alpha / r
MAX_CONTROLNET_SCALE = 2.0
CONTROLNET_AUTO_SCALE = 1.0  # what controlnet_scale=None means on a pipeline with a ControlNet
MAX_CANNY_THRESHOLD = 2040.0  # the L1 Sobel gradient's peak on 0-255 pixels (4 * 255 * 2)


class PromptWeight(NamedTuple):
    """One prompt of a blend: its embeddings count `weight / sum(weights)` of the conditioning."""

    text: str
    weight: float


class SeedWeight(NamedTuple):
    """One seed of a blend: its noise enters as `weight * noise / sqrt(sum(weights**2))`."""

    seed: int
    weight: float


@dataclass(frozen=True, slots=True)
class StreamParams:
    """What one stream generates and how (StreamDiffusion's `prepare()` arguments).

    The one home of each stream setting's default and range check: `prepare()`, `add_stream()`
    and `update_stream()` take these fields by name and build one StreamParams per call.

    - Timesteps: `t_index_list` indexes the `num_inference_steps` trailing-spaced timesteps (as
      StreamDiffusion does); when it is None, img2img uses diffusers' rule (the last
      `int(num_inference_steps * strength)` steps) and txt2img uses all of them.
    - `cfg_type` is Residual CFG's mode and only acts when `guidance_scale > 1` (as in diffusers):
      `none` runs the conditional branch only, `full` adds an unconditional batch row per latent,
      `self` approximates the unconditional noise by the stream's own residual noise scaled by
      `delta`, `initialize` computes it once per frame for the first step and then propagates it.
    - `schedule`: `turbo` takes the predicted clean latent (SD-Turbo/ADD, and one-step Euler);
      `lcm` applies LCM's boundary-condition scalings (c_skip, c_out).
    - `similarity_filter` skips a frame whose cosine similarity to the last processed input is at
      least `similarity_threshold`, at most `max_skip_frames` times in a row.
    - Blending (StreamDiffusion's): `prompt` may be a weighted list of prompts, `[{"text", "weight"}]`
      or (text, weight) pairs, conditioned on the weight-normalised sum of their embeddings; `seed`
      a weighted list of seeds, `[{"seed", "weight"}]` or pairs, whose noise tensors are summed
      with the weights and renormalised to unit variance. Lists are stored as tuples of
      PromptWeight / SeedWeight; weights are finite and >= 0 with a positive sum.
    - `temporal_blend` in [0, 0.9]: an exponential moving average over the stream's denoised
      latents, `out_t = (1 - b) * x0_t + b * out_{t-1}`; 0 (the default) is off.
    - `lora`: a style LoRA registered with the pipeline (`load_lora`), applied to this stream's
      rows only, at `lora_scale` x its alpha / r (diffusers' `cross_attention_kwargs={"scale"}`);
      None (the default) is none. Switching it takes effect on the next frame.
    - `controlnet_scale` in [0, 2] multiplies the ControlNet's residuals for this stream (diffusers'
      `controlnet_conditioning_scale`); its conditioning image is the canny map of the input frame
      with thresholds `canny_low` <= `canny_high` (0-255 pixel scale, cv2.Canny's). None (the
      default): CONTROLNET_AUTO_SCALE on img2img frames when the pipeline has a ControlNet, off
      otherwise; 0: off. A positive value needs a loaded ControlNet and an input frame (txt2img
      frames have no edges to follow: such a frame is refused with a ValueError).
    """

    prompt: str | tuple[PromptWeight, ...] = ""
    negative_prompt: str = ""
    guidance_scale: float = 0.0
    delta: float = 1.0
    cfg_type: str = "self"
    seed: int | tuple[SeedWeight, ...] = 0
    num_inference_steps: int = 2
    strength: float = 0.5
    t_index_list: tuple[int, ...] | None = None  # any sequence of ints; stored as a tuple
    schedule: str = "turbo"
    width: int | None = None
    height: int | None = None
    use_denoising_batch: bool = True
    similarity_filter: bool = False
    similarity_threshold: float = 0.98
    max_skip_frames: int = 10
    temporal_blend: float = 0.0
    lora: str | None = None
    lora_scale: float = 1.0
    controlnet_scale: float | None = None
    canny_low: float = 100.0
    canny_high: float = 200.0

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            object.__setattr__(self, "prompt", _blend("prompt", self.prompt, "text", _check_text))
        if not isinstance(self.negative_prompt, str):
            raise ValueError(f"negative_prompt must be a str, got {type(self.negative_prompt).__name__}")
        for name, high in (("guidance_scale", 50.0), ("delta", 10.0)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= high:
                raise ValueError(f"{name} must be a number in [0, {high:g}], got {value!r}")
        if self.cfg_type not in CFG_TYPES:
            raise ValueError(f"cfg_type must be one of {CFG_TYPES}, got {self.cfg_type!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if _is_int(self.seed):
            _check_seed("seed", self.seed)
        else:
            object.__setattr__(self, "seed", _blend("seed", self.seed, "seed", _check_seed))
        n = self.num_inference_steps
        if not _is_int(n) or not 1 <= n <= MAX_TRAIN_TIMESTEPS:
            raise ValueError(f"num_inference_steps must be an int in [1, 1000], got {n!r}")
        if self.t_index_list is not None:
            indices = tuple(self.t_index_list)
            if (not indices or not all(_is_int(i) and 0 <= i < n for i in indices)
                    or list(indices) != sorted(set(indices))):
                raise ValueError(f"t_index_list must be non-empty, strictly increasing indices "
                                 f"in [0, num_inference_steps={n}), got {self.t_index_list!r}")
            object.__setattr__(self, "t_index_list", indices)
        s = self.strength
        if not isinstance(s, (int, float)) or not 0 < s <= 1:
            raise ValueError(f"strength must be in (0, 1], got {s!r}")
        if self.t_index_list is None and int(n * s) < 1:
            raise ValueError(f"strength={s} x num_inference_steps={n} leaves no denoising step; "
                             f"raise either so that int(steps * strength) >= 1")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value <= 0):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not 0 < self.similarity_threshold <= 1:
            raise ValueError(f"similarity_threshold must be in (0, 1], got {self.similarity_threshold!r}")
        if not _is_int(self.max_skip_frames) or self.max_skip_frames < 0:
            raise ValueError(f"max_skip_frames must be an int >= 0, got {self.max_skip_frames!r}")
        b = self.temporal_blend
        if (not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b)
                or not 0 <= b <= MAX_TEMPORAL_BLEND):
            raise ValueError(f"temporal_blend must be a number in [0, {MAX_TEMPORAL_BLEND}] "
                             f"(0: off), got {b!r}")
        object.__setattr__(self, "temporal_blend", float(b))
        if self.lora is not None and (not isinstance(self.lora, str) or not 0 < len(self.lora) <= 64):
            raise ValueError(f"lora must be a registered adapter's name (1-64 chars) or None, got {self.lora!r}")
        c = self.lora_scale
        if (not isinstance(c, (int, float)) or isinstance(c, bool) or not math.isfinite(c)
                or not -MAX_LORA_SCALE <= c <= MAX_LORA_SCALE):
            raise ValueError(f"lora_scale must be a number in [-{MAX_LORA_SCALE:g}, {MAX_LORA_SCALE:g}], got {c!r}")
        object.__setattr__(self, "lora_scale", float(c))
        if self.controlnet_scale is not None:
            object.__setattr__(self, "controlnet_scale",
                               _number("controlnet_scale", self.controlnet_scale, 0.0, MAX_CONTROLNET_SCALE))
        for name in ("canny_low", "canny_high"):
            object.__setattr__(self, name, _number(name, getattr(self, name), 0.0, MAX_CANNY_THRESHOLD))
        if self.canny_low > self.canny_high:
            raise ValueError(f"canny_low must be <= canny_high, got {self.canny_low:g} > {self.canny_high:g}")

    def step_indices(self, txt2img: bool) -> tuple[int, ...]:
        """Indices into the trailing timesteps that this stream denoises, in order."""
        if self.t_index_list is not None:
            return self.t_index_list
        n = self.num_inference_steps
        first = 0 if txt2img else n - min(int(n * self.strength), n)
        return tuple(range(first, n))

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0 and self.cfg_type != "none"

    def updated(self, **changes: Any) -> StreamParams:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown stream setting(s): {sorted(unknown)}")
        return replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(name: str, value: Any, low: float, high: float) -> float:
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            or not low <= value <= high):
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a str, got {type(value).__name__}")


def _check_seed(name: str, value: Any) -> None:
    if not _is_int(value) or not 0 <= value < 2**63:
        raise ValueError(f"{name} must be an int in [0, 2**63), got {value!r}")


def _blend(name: str, value: Any, key: str, check: Any) -> tuple:
    """`value` as a tuple of PromptWeight (key "text") or SeedWeight (key "seed"), checked.

    Entries are mappings {key, "weight"} or (value, weight) pairs. Errors start with `name`.
    """
    entry_type = PromptWeight if key == "text" else SeedWeight
    plain = "a str" if key == "text" else "an int"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be {plain} or a list of {{{key}, weight}} entries, "
                         f"got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must list at least one {{{key}, weight}} entry, got an empty list")
    if len(value) > MAX_BLEND:
        raise ValueError(f"{name} may blend at most {MAX_BLEND} entries, got {len(value)}")
    entries = []
    for i, entry in enumerate(value):
        if isinstance(entry, Mapping):
            if set(entry) != {key, "weight"}:
                raise ValueError(f"{name} entry {i} must have exactly the keys {key!r} and 'weight', "
                                 f"got {sorted(map(str, entry))}")
            item, weight = entry[key], entry["weight"]
        elif isinstance(entry, Sequence) and not isinstance(entry, (str, bytes)) and len(entry) == 2:
            item, weight = entry
        else:
            raise ValueError(f"{name} entry {i} must be {{{key!r}: ..., 'weight': ...}}, got {entry!r}")
        check(f"{name} entry {i} {key}", item)
        if (not isinstance(weight, (int, float)) or isinstance(weight, bool)
                or not math.isfinite(weight) or weight < 0):
            raise ValueError(f"{name} entry {i} weight must be a finite number >= 0, got {weight!r}")
        entries.append(entry_type(item, float(weight)))
    total = sum(e.weight for e in entries)
    if not 0 < total < math.inf:
        raise ValueError(f"{name} weights must have a finite sum greater than 0, got {total:g}")
    return tuple(entries)
