"""StreamPipeline: StreamDiffusion-style real-time img2img / txt2img on diffusers components."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import PIL.Image
import torch
from diffusers import DDPMScheduler

from . import components as comp
from .canny import canny_control_image
from .codec import LatentCodec
from .config import CONTROLNET_AUTO_SCALE, StreamParams
from .controlnet import ControlNet, check_fits, load_controlnet
from .denoise import Denoiser, Job
from .image import Frame, fit, frame_size, frame_to_tensor, to_pil
from .lora import DEFAULT_STRATEGY, LoraBank
from .lora_format import LoraAdapter
from .prompt import PromptEncoder
from .stream import StateFactory, StreamState

MAX_LORA_PROMPT_CACHES = 8  # (adapter, scale) pairs whose prompt embeddings stay cached


class StreamPipeline:
    """Streaming diffusion over one UNet, one VAE and one CLIP text encoder.

    `prepare()` precomputes a stream (prompt embeddings, noise, scheduler coefficients); each
    `__call__` then costs one VAE encode, one batched UNet call per round (one round with Stream
    Batch) and one VAE decode. `run()` serves many streams in one batch (see StreamBatcher).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, *,
                 device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                 name: str = "custom", demo: bool = False, resolution: int | None = None,
                 channels_last: bool = True, fuse_qkv: bool = True, max_cached_prompts: int = 64,
                 max_loras: int = 4, lora_strategy: str | None = None, controlnet: Any = None):
        self.device = comp.resolve_device(device)
        self.dtype = comp.resolve_dtype(dtype, self.device)
        self.name, self.demo = name, demo
        self.codec = LatentCodec(vae, self.dtype)
        # Before the UNet's qkv fusion: controlnet-shape copies the UNet's encoder by state dict.
        controlnet_name = controlnet if isinstance(controlnet, str) else "custom"
        if isinstance(controlnet, str):
            controlnet = load_controlnet(controlnet, unet, self.codec.downscale, self.dtype)
        elif controlnet is not None:
            check_fits(controlnet, unet, self.codec.downscale, controlnet_name)
        modules = [(unet, self.dtype), (vae, self.codec.dtype), (text_encoder, self.dtype)]
        modules += [(controlnet, self.dtype)] if controlnet is not None else []
        for module, module_dtype in modules:
            # nn.Module.to: diffusers' override warns about "modules to keep in float32" even
            # when there are none, on every cast.
            torch.nn.Module.to(module, device=self.device, dtype=module_dtype)
            module.eval().requires_grad_(False)
        if channels_last:
            # Convolutions dominate at these sizes; oneDNN and cuDNN are fastest on NHWC.
            for module in (unet, vae, controlnet):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        if fuse_qkv:
            # One matmul for q, k, v (k, v for cross-attention): ~5% of a demo step on CPU.
            for module in (unet, controlnet):
                if module is not None:
                    module.fuse_qkv_projections()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.scheduler = tokenizer, scheduler
        self.denoiser = Denoiser(unet, scheduler.config.prediction_type, self.dtype)
        # A ControlNet streams use at their controlnet_scale (None: no stream can).
        self.controlnet = ControlNet(controlnet, controlnet_name, self.dtype) if controlnet is not None else None
        self.denoiser.controlnet = self.controlnet
        # Style LoRAs streams may pick (load_lora); nothing is hooked until one is loaded.
        self.loras = LoraBank(unet, dtype=self.dtype, device=self.device, max_resident=max_loras,
                              strategy=lora_strategy or DEFAULT_STRATEGY, text_encoder=text_encoder)
        self.denoiser.lora = self.loras
        # Prompt embeddings through an adapter's text-encoder layers: one cache per (lora, scale).
        self._lora_prompts: OrderedDict[tuple[str, float], PromptEncoder] = OrderedDict()
        self.prompts = PromptEncoder(tokenizer, text_encoder, self.device, self.dtype, max_cached_prompts)
        unet_down = 2 ** (len(unet.config.block_out_channels) - 1)
        side = resolution or unet.config.sample_size * self.codec.downscale
        # alphas_cumprod for any SD-family scheduler config (beta schedule, rescaling, ...).
        alphas_cumprod = DDPMScheduler.from_config(scheduler.config).alphas_cumprod
        self.states = StateFactory(encode_prompt=self._embed, alphas_cumprod=alphas_cumprod,
                                   latent_channels=self.codec.latent_channels,
                                   downscale=self.codec.downscale,
                                   size_multiple=self.codec.downscale * unet_down,
                                   default_size=(side, side), device=self.device)
        self.states.working_size(StreamParams())  # fail fast if the default resolution is invalid
        self._state: StreamState | None = None

    @classmethod
    def from_pretrained(cls, name_or_path: str = "demo", device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None, **options: Any) -> StreamPipeline:
        """Load `"demo"`, `"sd-turbo-shape"`, a diffusers folder or a hub id.

        Options: `tiny_vae` (bool, or a path/hub id of an AutoencoderTiny; default True for the
        built-in models), `seed` (built-in weights), `resolution`, `channels_last`, `fuse_qkv`,
        `max_cached_prompts`, `max_loras`, `lora_strategy`, `controlnet` (a diffusers ControlNet
        folder or hub id, or "controlnet-shape": random weights on this UNet's architecture).
        """
        loaded = comp.load_components(name_or_path, tiny_vae=options.pop("tiny_vae", None),
                                      seed=options.pop("seed", None),
                                      dtype=comp.resolve_dtype(dtype, comp.resolve_device(device)))
        default_resolution = loaded.pop("resolution")
        if options.get("resolution") is None:
            options["resolution"] = default_resolution
        return cls(**loaded, device=device, dtype=dtype, **options)

    @property
    def model_info(self) -> dict[str, Any]:
        width, height = self.states.default_size
        return {"name": self.name, "demo": self.demo, "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."), "resolution": [width, height],
                "vae": "tiny" if self.codec.tiny else "kl", "size_multiple": self.states.size_multiple,
                "controlnet": self.controlnet.name if self.controlnet is not None else None}

    # -- style LoRAs ---------------------------------------------------------------------------

    def load_lora(self, name: str, path: str) -> LoraAdapter:
        """Register a diffusers-format LoRA file (or its folder) as `name`, for streams' `lora`
        setting. A malformed file raises LoraError naming it and changes nothing loaded."""
        adapter = self.loras.register(name, path)
        for key in [k for k in self._lora_prompts if k[0] == name]:
            del self._lora_prompts[key]  # embeddings of the file this name named before
        return adapter

    def _embed(self, prompt: str | Sequence[Any], lora: tuple[str, float] | None = None) -> torch.Tensor:
        """A stream's conditioning; through its LoRA's text-encoder layers when it has any
        (diffusers' encode_prompt with lora_scale), cached per (adapter, scale)."""
        if lora is None or lora[0] not in self.loras.text_adapters:
            return self.prompts.embed(prompt)
        encoder = self._lora_prompts.get(lora)
        if encoder is None:
            encoder = PromptEncoder(self.tokenizer, self.text_encoder, self.device, self.dtype,
                                    self.prompts.max_cached)
        self._lora_prompts[lora] = encoder
        self._lora_prompts.move_to_end(lora)
        while len(self._lora_prompts) > MAX_LORA_PROMPT_CACHES:
            self._lora_prompts.popitem(last=False)
        with self.loras.rows([(lora, 1)], component="text_encoder"):
            return encoder.embed(prompt)

    def check(self, params: StreamParams) -> None:
        """ValueError, naming the setting, for params this pipeline cannot serve (a working size
        that is not a multiple of size_multiple, an adapter that is not registered, a
        controlnet_scale without a ControlNet)."""
        self.states.working_size(params)
        self.loras.check(params.lora)
        if params.controlnet_scale and self.controlnet is None:
            raise ValueError(f"controlnet_scale={params.controlnet_scale:g} needs a ControlNet and this "
                             f"pipeline has none (start it with a ControlNet folder or controlnet-shape)")

    def control_scale(self, params: StreamParams, txt2img: bool) -> float:
        """The ControlNet scale of a stream's frame (0: off); ValueError for a positive
        controlnet_scale on a txt2img frame, which has no input to take edges from."""
        scale = params.controlnet_scale
        if scale is None:
            return CONTROLNET_AUTO_SCALE if self.controlnet is not None and not txt2img else 0.0
        if scale > 0 and txt2img:
            raise ValueError(f"controlnet_scale={scale:g} needs an input frame (its canny edges "
                             f"condition the ControlNet); send a frame, or set controlnet_scale to 0")
        return scale

    # -- single stream -------------------------------------------------------------------------

    def prepare(self, prompt: str | None = None, /, **settings: Any) -> None:
        """Precompute the stream: prompt embeddings, noise, timesteps and coefficients.

        `settings` are StreamParams fields (its defaults apply to the rest); the prompt may also
        come first, as in `prepare("a cat", seed=1)`.
        """
        if prompt is not None:
            settings["prompt"] = prompt
        params = StreamParams(**settings)
        self.check(params)
        self._state = self.states.build(params)

    def update_prompt(self, prompt: str | Sequence[Any], negative_prompt: str | None = None) -> None:
        """Switch the prompt (or prompt blend) mid-stream: cached embeddings, same buffers, next
        frame onwards."""
        changes: dict[str, Any] = {"prompt": prompt}
        if negative_prompt is not None:
            changes["negative_prompt"] = negative_prompt
        self.update(**changes)

    def update(self, **changes: Any) -> None:
        """Change StreamParams fields from the next frame on, keeping what stays valid: prompt
        and seed blends and temporal_blend carry the Stream Batch buffer over."""
        state = self._ensure_state()
        params = state.params.updated(**changes)
        self.check(params)
        self._state = self.states.build(params, previous=state)

    @property
    def params(self) -> StreamParams:
        return self._ensure_state().params

    def __call__(self, image: Frame | None = None) -> PIL.Image.Image:
        """img2img on `image` (PIL, numpy or tensor; any size), or txt2img when it is None."""
        return self.run([(self._ensure_state(), image)])[0]

    def _ensure_state(self) -> StreamState:
        if self._state is None:
            self.prepare()
        return self._state

    # -- many streams --------------------------------------------------------------------------

    def new_state(self, params: StreamParams, previous: StreamState | None = None) -> StreamState:
        return self.states.build(params, previous)

    @torch.inference_mode()
    def run(self, items: Sequence[tuple[StreamState, Frame | None]],
            return_exceptions: bool = False) -> list[PIL.Image.Image | Exception]:
        """One frame for each (state, frame) pair, all in shared VAE and UNet batches.

        Each state's result equals what it gets alone (up to batched float rounding). With
        `return_exceptions`, a bad frame yields its ValueError in place of an image instead of
        failing the whole batch.
        """
        if len({(s.width, s.height) for s, _ in items}) > 1:
            raise ValueError("a batch must share one working size; group states by (width, height)")
        if len({id(s) for s, _ in items}) != len(items):
            raise ValueError("a state can appear only once per batch")
        outputs: list[Any] = [None] * len(items)
        encode, todo = [], []  # todo: (index, box or None for txt2img, output size)
        controlled: dict[int, tuple[int, float]] = {}  # todo position -> (row of encode, scale)
        # 1. preprocess; the similarity filter answers unchanged frames with the last output
        for i, (state, frame) in enumerate(items):
            try:
                control_scale = self.control_scale(state.params, txt2img=frame is None)
                if frame is None:
                    todo.append((i, None, (state.width, state.height)))
                    continue
                size = frame_size(frame)
                batch, box = fit(frame_to_tensor(frame, self.device), state.width, state.height)
            except ValueError as exc:
                if not return_exceptions:
                    raise
                outputs[i] = exc
                continue
            if state.filter is not None:
                if state.last_output is None or state.last_txt2img is not False:
                    state.filter.reset()
                if state.filter.should_skip(batch, key=size):
                    outputs[i] = state.last_output.copy()
                    continue
            if control_scale > 0:
                controlled[len(todo)] = (len(encode), control_scale)
            encode.append(batch)
            todo.append((i, box, size))
        if not todo:
            return outputs
        # 2. encode all img2img frames in one VAE call; canny maps of the ControlNet streams' frames
        latents = iter(self.codec.encode(torch.cat(encode)).split(1)) if encode else iter(())
        controls = self._control_images(items, todo, encode, controlled)
        # 3. noise each frame to its first timestep (txt2img starts from pure noise)
        jobs = []
        for k, (i, box, _) in enumerate(todo):
            state = items[i][0]
            plan = state.plan_for(txt2img=box is None)
            # x_t = alpha * x0 + beta * noise: the frame's latent, or for txt2img the zero (mean)
            # latent, as diffusers' trailing Euler starts (noise * sigma_max, scaled to the model)
            x0 = next(latents) if box is not None else 0.0
            x_first = plan.alpha[:1] * x0 + plan.beta[:1] * plan.noise[:1]  # (1, C, h, w)
            jobs.append(Job.start(plan, state.guidance, x_first, state.params.use_denoising_batch))
            if k in controls:
                jobs[-1].control, jobs[-1].control_scale = controls[k], controlled[k][1]
        # 4. denoise: one batched UNet call per round (and one ControlNet call over its rows)
        self.denoiser.run(jobs)
        # 5. temporal blend (opt-in): a stream's output latent is an EMA of its denoised latents
        finished = []
        for (i, box, _), job in zip(todo, jobs):
            temporal = items[i][0].temporal
            finished.append(job.output if temporal is None else temporal(job.output, txt2img=box is None))
        # 6. decode all results in one VAE call, then back to each frame's own size
        images = self.codec.decode(torch.cat(finished))
        for (i, box, size), image in zip(todo, images):
            state = items[i][0]
            outputs[i] = to_pil(image, box or (0, 0, state.width, state.height), size)
            state.last_output = outputs[i]
        return outputs

    def _control_images(self, items, todo, encode, controlled) -> dict[int, torch.Tensor]:
        """todo position -> (1, 3, H, W) canny map of its frame, all frames in one batched call."""
        if not controlled:
            return {}
        params = [items[todo[k][0]][0].params for k in controlled]
        low = torch.tensor([p.canny_low for p in params])
        high = torch.tensor([p.canny_high for p in params])
        frames = torch.cat([encode[row] for row, _ in controlled.values()])  # (N, 3, H, W) in [-1, 1]
        return dict(zip(controlled, canny_control_image(frames, low, high).split(1)))
