"""Batched denoising with Stream Batch and Residual CFG: one UNet call per round, many streams.

A `Job` is one frame of one stream in flight. In Stream Batch mode it is a single round whose
rows are the new frame at slot 0 plus the buffered latents of earlier frames at slots 1..N-1;
the oldest one leaves finished and the others move one slot on. Otherwise (or while the buffer
is still empty) the frame walks the N slots in N rounds, and the walk fills the buffer. Rows of
all jobs in a round share one UNet call, which is how multi-stream batching happens.

Residual CFG keeps, per row, an estimate of the noise actually present in its latent (`stock`):
noise_0 for a fresh frame, then noise_{k+1} plus the part of x0's error that came from the
residual noise, carried along with the row as it moves slot to slot (StreamDiffusion's RCFG).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from .controlnet import ControlRows
from .schedule import Plan


@dataclass(slots=True)
class Guidance:
    cond: torch.Tensor  # (1, L, D) prompt embeddings
    uncond: torch.Tensor | None  # (1, L, D) negative-prompt embeddings, for full/initialize
    cfg_type: str  # effective mode: "none" when guidance_scale <= 1
    scale: float
    delta: float
    lora: tuple[str, float] | None = None  # (adapter, lora_scale) for every row of the stream


@dataclass(slots=True)
class Job:
    plan: Plan
    guidance: Guidance
    x: torch.Tensor  # (R, C, h, w) latents of this round's rows
    slots: list[int]  # slot index of each row, consecutive
    stock: torch.Tensor  # (R, C, h, w) residual-noise estimate of each row
    batched: bool
    fill_buffer: bool
    output: torch.Tensor | None = None  # (1, C, h, w) finished x0
    # ControlNet: the new frame's conditioning image, at control_scale > 0, for every row of the
    # job (Stream Batch's buffered rows of earlier frames too: one map per stream and round).
    control: torch.Tensor | None = None  # (1, 3, H, W) in [0, 1]
    control_scale: float = 0.0
    _filled: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @classmethod
    def start(cls, plan: Plan, guidance: Guidance, x_first: torch.Tensor, stream_batch: bool) -> Job:
        """A job for a frame whose slot-0 latent is `x_first` (1, C, h, w)."""
        n = plan.num_steps
        first_stock = plan.noise[:1]
        if stream_batch and n > 1 and plan.buffer_x is not None:
            return cls(plan, guidance, torch.cat([x_first, plan.buffer_x]), list(range(n)),
                       torch.cat([first_stock, plan.buffer_stock]), batched=True, fill_buffer=False)
        return cls(plan, guidance, x_first, [0], first_stock, batched=False,
                   fill_buffer=stream_batch and n > 1)

    @property
    def done(self) -> bool:
        return self.output is not None

    def advance(self, x0: torch.Tensor, x_next: torch.Tensor, stock_next: torch.Tensor) -> None:
        last = self.plan.num_steps - 1
        if self.batched:
            self.output = x0[-1:]
            self.plan.buffer_x, self.plan.buffer_stock = x_next, stock_next
            return
        if self.slots[0] == last:
            self.output = x0
            if self.fill_buffer:
                # The first frame's own intermediate latents prime the buffer, so Stream Batch
                # never denoises an all-zero latent (StreamDiffusion's warm-up artefact).
                self.plan.buffer_x = torch.cat([x for x, _ in self._filled])
                self.plan.buffer_stock = torch.cat([s for _, s in self._filled])
            return
        if self.fill_buffer:
            self._filled.append((x_next, stock_next))
        self.x, self.stock, self.slots = x_next, stock_next, [self.slots[0] + 1]


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class Denoiser:
    """Runs rounds of jobs through the UNet; owns no per-stream state."""

    def __init__(self, unet: torch.nn.Module, prediction_type: str, dtype: torch.dtype):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}; "
                             f"streamdiff handles {', '.join(map(repr, PREDICTION_TYPES))} models")
        self.unet = unet
        self.prediction_type = prediction_type
        self.dtype = dtype
        self.lora = None  # a lora.LoraBank: each row gets its own stream's adapter
        self.controlnet = None  # a controlnet.ControlNet: rows of jobs with a control image use it

    @torch.inference_mode()
    def run(self, jobs: list[Job]) -> None:
        """Advance every job to completion; each round is one batched UNet call."""
        while active := [job for job in jobs if not job.done]:
            self._round(active)

    def _round(self, jobs: list[Job]) -> None:
        # 1. stack the rows of all jobs: conditional rows, then any unconditional ones
        samples, timesteps, embeds, sizes = [], [], [], []
        control_rows: list[ControlRows] = []
        for job in jobs:
            g, rows = job.guidance, job.x.shape[0]
            t = job.plan.timesteps[job.slots[0]:job.slots[-1] + 1]  # (R,)
            parts = [(job.x, t, g.cond.expand(rows, -1, -1))]
            if g.cfg_type == "full":
                parts.append((job.x, t, g.uncond.expand(rows, -1, -1)))
            elif g.cfg_type == "initialize" and job.slots[0] == 0:
                parts.append((job.x[:1], t[:1], g.uncond))
            for x, tt, e in parts:
                samples.append(x)
                timesteps.append(tt)
                embeds.append(e)
            sizes.append(sum(x.shape[0] for x, _, _ in parts))
            if job.control is not None:  # the unconditional rows too, as diffusers' CFG does
                first_row = sum(sizes) - sizes[-1]
                control_rows.append(ControlRows(first_row, sizes[-1], job.control, job.control_scale))
        sample, timestep, embed = torch.cat(samples).to(self.dtype), torch.cat(timesteps), torch.cat(embeds)
        # 2. the ControlNet once over the rows that use it: residuals for the UNet's blocks
        extra = self.controlnet.residuals(sample, timestep, embed, control_rows) if control_rows else {}
        # 3. one UNet call for everything, each row with its own stream's LoRA (if any)
        rows = [(job.guidance.lora, n) for job, n in zip(jobs, sizes)]
        with self.lora.rows(rows) if self.lora is not None else nullcontext():
            model_out = self.unet(sample, timestep, encoder_hidden_states=embed, return_dict=False,
                                  **extra)[0].float()
        # 4. per job: guidance, x0, and the latent and residual noise of the next slot
        for job, out in zip(jobs, model_out.split(sizes)):
            job.advance(*self._step(job, out))

    def _step(self, job: Job, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g, plan, rows = job.guidance, job.plan, job.x.shape[0]
        k = slice(job.slots[0], job.slots[-1] + 1)
        if self.prediction_type == "sample":
            out = self._sample_to_epsilon(job, out, k)
        cond = out[:rows]
        stock = job.stock
        if g.cfg_type == "full":
            model_pred = out[rows:] + g.scale * (cond - out[rows:])
        elif g.cfg_type in ("self", "initialize"):
            if g.cfg_type == "initialize" and job.slots[0] == 0:
                # The one real unconditional prediction replaces the first row's estimate.
                stock = torch.cat([out[rows:], stock[1:]])
            uncond = g.delta * stock
            model_pred = uncond + g.scale * (cond - uncond)
        else:
            model_pred = cond
        x0 = self._denoised(job.x, model_pred, plan, k)
        # Rows before the last slot move on: re-noise x0 to the next timestep with noise_{k+1}.
        movers = sum(1 for s in job.slots if s < plan.num_steps - 1)
        nk = slice(job.slots[0] + 1, job.slots[0] + 1 + movers)
        x_next = plan.alpha[nk] * x0[:movers] + plan.beta[nk] * plan.noise[nk]
        # x0 is linear in x_t, so the residual noise's share of x0 is x0 evaluated on beta*stock.
        noise_error = self._denoised(plan.beta[k] * stock, model_pred, plan, k)[:movers]
        stock_next = plan.noise[nk] + plan.alpha[nk] / plan.beta[nk] * noise_error
        return x0, x_next, stock_next

    @staticmethod
    def _sample_to_epsilon(job: Job, out: torch.Tensor, k: slice) -> torch.Tensor:
        """An x0 model's rows as the noise they imply, eps = (x_t - alpha * x0) / beta.

        Guidance and Residual CFG's noise estimate then work in the epsilon space they are
        defined in; x0 comes back from eps exactly (up to rounding) when no guidance mixes it.
        Rows: the job's, then as many of its unconditional rows (all for full CFG, the first
        for initialize) at the same slots.
        """
        extra = out.shape[0] - job.x.shape[0]
        alpha, beta, x = (torch.cat([v, v[:extra]]) for v in (job.plan.alpha[k], job.plan.beta[k], job.x))
        return (x - alpha * out) / beta

    def _denoised(self, x: torch.Tensor, model_pred: torch.Tensor, plan: Plan, k: slice) -> torch.Tensor:
        alpha, beta = plan.alpha[k], plan.beta[k]
        if self.prediction_type in ("epsilon", "sample"):  # sample rows arrive as epsilon
            x0 = (x - beta * model_pred) / alpha
        else:
            x0 = alpha * x - beta * model_pred
        return plan.c_out[k] * x0 + plan.c_skip[k] * x
