"""All streaming state of one stream in one object: embeddings, schedules, buffers, filter."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import PIL.Image
import torch

from .config import StreamParams
from .denoise import Guidance
from .schedule import Plan, build_plan, draw_noise
from .similarity import SimilarityFilter

# Changing any of these changes the timesteps or noise, so the latent buffer is rebuilt.
_SCHEDULE_FIELDS = ("seed", "num_inference_steps", "strength", "t_index_list", "schedule",
                    "width", "height", "use_denoising_batch")


@dataclass(slots=True)
class StreamState:
    """One stream: created by `prepare()` / `add_stream()`, mutated only by pipeline calls."""

    params: StreamParams
    width: int  # working size in pixels (a multiple of the pipeline's size_multiple)
    height: int
    guidance: Guidance
    plans: dict[bool, Plan]  # keyed by txt2img
    filter: SimilarityFilter | None
    last_txt2img: bool | None = None  # mode of the previous frame; a switch restarts the buffer
    last_output: PIL.Image.Image | None = None

    def plan_for(self, txt2img: bool) -> Plan:
        plan = self.plans[txt2img]
        if self.last_txt2img is not None and self.last_txt2img != txt2img:
            plan.reset_buffer()
        self.last_txt2img = txt2img
        return plan


@dataclass(frozen=True, slots=True)
class StateFactory:
    """What a pipeline lends to build stream states (keeps this module free of the pipeline)."""

    encode_prompt: Callable[[str], torch.Tensor]
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,)
    latent_channels: int
    downscale: int  # pixels per latent cell
    size_multiple: int  # pixels; working sizes must be multiples of it
    default_size: tuple[int, int]
    device: torch.device

    def working_size(self, params: StreamParams) -> tuple[int, int]:
        width = params.width or self.default_size[0]
        height = params.height or self.default_size[1]
        for name, value in (("width", width), ("height", height)):
            if value % self.size_multiple:
                raise ValueError(f"{name}={value} must be a multiple of {self.size_multiple} "
                                 f"for this model (VAE and UNet downsampling)")
        return width, height

    def build(self, params: StreamParams, previous: StreamState | None = None) -> StreamState:
        """A state for `params`, reusing what `previous` computed that is still valid."""
        width, height = self.working_size(params)
        if previous is None or any(getattr(params, f) != getattr(previous.params, f)
                                   for f in _SCHEDULE_FIELDS):
            plans = self._plans(params, width, height)
        else:
            plans = previous.plans
        flt = None
        if params.similarity_filter:
            flt = SimilarityFilter(params.similarity_threshold, params.max_skip_frames)
        state = StreamState(params, width, height, self._guidance(params), plans, flt)
        if previous is not None and plans is previous.plans:
            # Same schedule: the buffer carries on (a new prompt takes effect without re-warmup).
            state.last_txt2img, state.last_output = previous.last_txt2img, previous.last_output
        return state

    def _plans(self, params: StreamParams, width: int, height: int) -> dict[bool, Plan]:
        num = max(len(params.step_indices(False)), len(params.step_indices(True)))
        shape = (self.latent_channels, height // self.downscale, width // self.downscale)
        noise = draw_noise(params.seed, num, shape, self.device)
        return {txt: build_plan(params, txt, self.alphas_cumprod, noise) for txt in (False, True)}

    def _guidance(self, params: StreamParams) -> Guidance:
        cfg_type = params.cfg_type if params.uses_guidance else "none"
        uncond = None
        if cfg_type in ("full", "initialize"):
            uncond = self.encode_prompt(params.negative_prompt)
        return Guidance(cond=self.encode_prompt(params.prompt), uncond=uncond, cfg_type=cfg_type,
                        scale=float(params.guidance_scale), delta=float(params.delta))
