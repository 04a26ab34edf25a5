"""Timesteps and per-step coefficients of one stream: everything the denoiser needs, precomputed.

A stream denoises N = len(step indices) steps. Slot k of a frame sits at timestep t_k with
x_k = alpha_k * x_0 + beta_k * noise_k (alpha = sqrt(alphas_cumprod[t]), beta = sqrt(1 - ...)).
That VP form equals diffusers' Euler sigma form divided by sqrt(sigma^2 + 1), so one step here is
one Euler step there; multi-step re-noising with fresh noise is the LCM/consistency sampler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .config import SeedWeight, StreamParams

# LCM's boundary condition (LCMScheduler.get_scalings_for_boundary_condition_discrete).
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


def trailing_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """diffusers' `timestep_spacing="trailing"` (SD-Turbo, LCM): starts at the last train step."""
    step_ratio = num_train_timesteps / num_inference_steps
    return np.round(np.arange(num_train_timesteps, 0, -step_ratio)).astype(np.int64) - 1


@dataclass(slots=True)
class Plan:
    """One stream's schedule for one mode (img2img or txt2img), plus its Stream Batch buffer.

    Tensors live on the pipeline's device in float32: scheduler arithmetic on 4-channel latents
    is cheap, and fp32 keeps the 1/alpha amplification at high timesteps from eating bf16 bits.
    """

    timesteps: torch.Tensor  # (N,) float, fed to the UNet
    alpha: torch.Tensor  # (N, 1, 1, 1) sqrt(alphas_cumprod[t])
    beta: torch.Tensor  # (N, 1, 1, 1) sqrt(1 - alphas_cumprod[t])
    c_skip: torch.Tensor  # (N, 1, 1, 1)
    c_out: torch.Tensor  # (N, 1, 1, 1)
    noise: torch.Tensor  # (N, C, h, w) fixed per seed: noise_k enters at slot k
    # Stream Batch: latents (and their residual noise) of earlier frames waiting at slots 1..N-1.
    buffer_x: torch.Tensor | None = None  # (N-1, C, h, w)
    buffer_stock: torch.Tensor | None = None  # (N-1, C, h, w)

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    def reset_buffer(self) -> None:
        self.buffer_x = None
        self.buffer_stock = None


def draw_noise(seed: int, num: int, latent_shape: tuple[int, int, int],
               device: torch.device) -> torch.Tensor:
    """`num` noise tensors drawn one by one from a CPU generator seeded with `seed`.

    Drawing slot by slot makes noise_0 equal to diffusers' first `randn_tensor(generator=...)`
    draw for the same seed, on any device.
    """
    generator = torch.Generator("cpu").manual_seed(seed)
    draws = [torch.randn((1, *latent_shape), generator=generator) for _ in range(num)]
    return torch.cat(draws).to(device)  # (num, C, h, w)


def seed_noise(seed: int | Sequence[SeedWeight], num: int, latent_shape: tuple[int, int, int],
               device: torch.device, bank: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """`draw_noise` for a seed, or StreamDiffusion's seed blend for a weighted list of seeds.

    `bank` maps seeds to their draws for this (num, latent_shape): the caller keeps it between
    calls so that changing only the weights re-blends without drawing again; it is updated to
    hold exactly the seeds of `seed`.
    """
    weights: dict[int, float] = {}  # a seed listed twice is one noise: its weights add up
    for entry in [SeedWeight(seed, 1.0)] if isinstance(seed, int) else seed:
        weights[entry.seed] = weights.get(entry.seed, 0.0) + entry.weight
    draws = {}
    for s in weights:
        cached = bank.get(s) if bank is not None else None
        draws[s] = cached if cached is not None else draw_noise(s, num, latent_shape, device)
    if bank is not None:
        bank.clear()
        bank.update(draws)
    return blend_noise(list(draws.values()), list(weights.values()))


def blend_noise(noises: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum(w_i * n_i) / sqrt(sum(w_i**2)): a weighted sum of independent unit-variance noises,
    rescaled back to unit variance (StreamDiffusion's seed blending). One entry with a positive
    weight returns that entry's own tensor, bit for bit."""
    live = [(n, w) for n, w in zip(noises, weights) if w > 0]
    if len(live) == 1:
        return live[0][0]
    total = sum(w for _, w in live)  # normalising first keeps huge weights from overflowing
    scale = sum((w / total) ** 2 for _, w in live) ** 0.5
    out = torch.zeros_like(live[0][0])
    for n, w in live:
        out.add_(n, alpha=w / total / scale)
    return out


def build_plan(params: StreamParams, txt2img: bool, alphas_cumprod: torch.Tensor,
               noise: torch.Tensor) -> Plan:
    """Precompute the coefficients for `params`' steps; `noise` holds at least N draws."""
    num_train = alphas_cumprod.shape[0]
    all_timesteps = trailing_timesteps(num_train, params.num_inference_steps)
    timesteps = torch.as_tensor(all_timesteps[list(params.step_indices(txt2img))])
    device = noise.device
    ac = alphas_cumprod.double()[timesteps]
    alpha, beta = ac.sqrt(), (1 - ac).sqrt()
    if params.schedule == "lcm":
        scaled_t = timesteps.double() * LCM_TIMESTEP_SCALING
        denom = scaled_t**2 + LCM_SIGMA_DATA**2
        c_skip, c_out = LCM_SIGMA_DATA**2 / denom, scaled_t / denom.sqrt()
    else:
        c_skip, c_out = torch.zeros_like(ac), torch.ones_like(ac)

    def column(v: torch.Tensor) -> torch.Tensor:
        return v.float().view(-1, 1, 1, 1).to(device)

    num = timesteps.shape[0]
    return Plan(timesteps=timesteps.float().to(device), alpha=column(alpha), beta=column(beta),
                c_skip=column(c_skip), c_out=column(c_out), noise=noise[:num])
