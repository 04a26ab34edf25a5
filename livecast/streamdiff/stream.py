"""All streaming state of one stream in one object: embeddings, schedules, noise, buffers,
filter and temporal blend."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Sequence

import PIL.Image
import torch

from .config import PromptWeight, StreamParams
from .denoise import Guidance
from .schedule import Plan, build_plan, seed_noise
from .similarity import SimilarityFilter

# Changing any of these changes the timesteps, so the latent buffer is rebuilt. A new seed (or
# seed blend) only swaps the noise: the buffer carries on, as it does for a new prompt.
_SCHEDULE_FIELDS = ("num_inference_steps", "strength", "t_index_list", "schedule",
                    "width", "height", "use_denoising_batch")


@dataclass(slots=True)
class TemporalBlend:
    """An exponential moving average over one stream's denoised latents (opt-in flicker damping):
    out_t = (1 - strength) * x0_t + strength * out_{t-1}, starting from out_0 = x0_0.

    It starts over on a switch between img2img and txt2img and on a new latent shape; the state
    factory also drops it when the working size changes.
    """

    strength: float  # StreamParams.temporal_blend, in (0, 0.9]
    latent: torch.Tensor | None = None  # (1, C, h, w) the last output latent
    txt2img: bool | None = None  # mode of that output

    def __call__(self, x0: torch.Tensor, txt2img: bool) -> torch.Tensor:
        if self.latent is None or self.txt2img != txt2img or self.latent.shape != x0.shape:
            self.latent = x0
        else:
            self.latent = torch.lerp(x0, self.latent, self.strength)
        self.txt2img = txt2img
        return self.latent

    def reset(self) -> None:
        self.latent = self.txt2img = None


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
    temporal: TemporalBlend | None = None  # None: temporal_blend == 0
    noise_bank: dict[int, torch.Tensor] = field(default_factory=dict)  # seed -> its draws

    def plan_for(self, txt2img: bool) -> Plan:
        plan = self.plans[txt2img]
        if self.last_txt2img is not None and self.last_txt2img != txt2img:
            plan.reset_buffer()
        self.last_txt2img = txt2img
        return plan


@dataclass(frozen=True, slots=True)
class StateFactory:
    """What a pipeline lends to build stream states (keeps this module free of the pipeline)."""

    # a prompt or a blend, and the stream's (lora, scale) for adapters with text-encoder layers
    encode_prompt: Callable[[str | Sequence[PromptWeight], tuple[str, float] | None], torch.Tensor]
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
        """A state for `params`, reusing what `previous` computed that is still valid.

        Nothing here stalls a live stream: prompts come from the encoder's cache (only new texts
        are encoded), a new seed or seed blend re-blends cached noise into the same buffers,
        and only a new schedule or size restarts the Stream Batch buffer.
        """
        width, height = self.working_size(params)
        same_schedule = previous is not None and all(
            getattr(params, f) == getattr(previous.params, f) for f in _SCHEDULE_FIELDS)
        bank = previous.noise_bank if same_schedule else {}  # draws for the same shape and count
        if same_schedule and params.seed == previous.params.seed:
            plans = previous.plans
        else:
            noise = seed_noise(params.seed, self._num_draws(params), self._latent_shape(width, height),
                               self.device, bank)
            if same_schedule:
                # Same coefficients and buffer, new noise from the next frame on.
                plans = {txt: dataclasses.replace(plan, noise=noise[:plan.num_steps])
                         for txt, plan in previous.plans.items()}
            else:
                plans = {txt: build_plan(params, txt, self.alphas_cumprod, noise) for txt in (False, True)}
        flt = None
        if params.similarity_filter:
            flt = SimilarityFilter(params.similarity_threshold, params.max_skip_frames)
        state = StreamState(params, width, height, self._guidance(params), plans, flt, noise_bank=bank)
        if same_schedule:
            # The buffer carries on (a new prompt or seed takes effect without re-warmup).
            state.last_txt2img, state.last_output = previous.last_txt2img, previous.last_output
        if params.temporal_blend > 0:
            state.temporal = TemporalBlend(params.temporal_blend)
            before = previous.temporal if previous is not None else None
            if before is not None and (previous.width, previous.height) == (width, height):
                state.temporal.latent, state.temporal.txt2img = before.latent, before.txt2img
        return state

    def _num_draws(self, params: StreamParams) -> int:
        return max(len(params.step_indices(False)), len(params.step_indices(True)))

    def _latent_shape(self, width: int, height: int) -> tuple[int, int, int]:
        return self.latent_channels, height // self.downscale, width // self.downscale

    def _guidance(self, params: StreamParams) -> Guidance:
        cfg_type = params.cfg_type if params.uses_guidance else "none"
        lora = (params.lora, params.lora_scale) if params.lora is not None and params.lora_scale else None
        uncond = None
        if cfg_type in ("full", "initialize"):
            uncond = self.encode_prompt(params.negative_prompt, lora)
        return Guidance(cond=self.encode_prompt(params.prompt, lora), uncond=uncond, cfg_type=cfg_type,
                        scale=float(params.guidance_scale), delta=float(params.delta), lora=lora)
