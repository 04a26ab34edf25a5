"""ControlNet for streams: a diffusers ControlNetModel run once per UNet call over the rows that
use it, each row's residuals scaled by its stream's `controlnet_scale`.

Sources: a diffusers ControlNet folder (its `config.json` and weights, or a pipeline folder with a
`controlnet/` subfolder), or `controlnet-shape`: diffusers' own `ControlNetModel.from_unet` on the
pipeline's UNet (its encoder copied, as ControlNet training starts) with random zero convolutions,
for timing; on `sd-turbo-shape` that is SD-Turbo's ControlNet architecture.

The conditioning image is the canny map of each stream's input frame (canny.py), at the working
resolution, as diffusers' ControlNet pipelines take it: RGB in [0, 1].
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

logger = logging.getLogger(__name__)

CONTROLNET_SHAPE = "controlnet-shape"
CONTROLNET_SHAPE_SEED = 20240602
# diffusers' conditioning embedding for SD (8x): three stride-2 convolutions. Smaller VAE factors
# keep its first channels (the 2x tiny test models take (16, 32), as diffusers' own tests do).
_SD_CONDITIONING_CHANNELS = (16, 32, 96, 256)
# Config fields a ControlNet must share with the UNet for its residuals to fit the UNet's blocks.
_MATCHING = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types",
             "cross_attention_dim")


class ControlNetError(ValueError):
    """A ControlNet that cannot be loaded or does not fit the pipeline's UNet and VAE."""


class ControlRows(NamedTuple):
    """Consecutive rows of one batched UNet call that use the ControlNet."""

    start: int
    count: int
    image: torch.Tensor  # (1, 3, H, W) in [0, 1]: the conditioning image of all these rows
    scale: float  # > 0


def conditioning_channels(downscale: int) -> tuple[int, ...]:
    """conditioning_embedding_out_channels whose stride-2 convolutions downsample by `downscale`."""
    steps = int(math.log2(downscale)) if downscale > 0 else -1
    if 2 ** steps != downscale or not 0 < steps < len(_SD_CONDITIONING_CHANNELS):
        raise ControlNetError(f"no ControlNet conditioning embedding for a {downscale}x VAE "
                              f"(2x, 4x or 8x)")
    return _SD_CONDITIONING_CHANNELS[:steps + 1]


def build_controlnet(unet, downscale: int, *, seed: int = CONTROLNET_SHAPE_SEED,
                     zero_conv_std: float = 0.02):
    """ControlNetModel.from_unet(unet) for a `downscale`x VAE, its zero convolutions drawn from
    N(0, zero_conv_std) under `seed` (all-zero ones would add nothing, and time nothing real).

    Call it before the UNet's qkv projections are fused: the encoder is copied by state dict.
    """
    from diffusers import ControlNetModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_channels(downscale))
        zero_convs = [*model.controlnet_down_blocks, model.controlnet_mid_block,
                      model.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero_convs:
                for param in conv.parameters():
                    param.normal_(0.0, zero_conv_std)
    return model.eval().requires_grad_(False)


def load_controlnet(source: str, unet, downscale: int, dtype: torch.dtype):
    """`controlnet-shape`, or a diffusers ControlNet folder / hub id checked against the UNet."""
    if source == CONTROLNET_SHAPE:
        logger.warning("streamdiff: %s builds a ControlNet with random zero convolutions: "
                       "for timing, not a trained model", CONTROLNET_SHAPE)
        return build_controlnet(unet, downscale)
    from diffusers import ControlNetModel

    options: dict[str, Any] = {"torch_dtype": dtype}
    if (Path(source) / "controlnet" / "config.json").is_file():
        options["subfolder"] = "controlnet"
    try:
        model = ControlNetModel.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        raise ControlNetError(f"ControlNet {source!r}: cannot load it ({exc})") from exc
    check_fits(model, unet, downscale, source)
    return model


def check_fits(model, unet, downscale: int, source: str) -> None:
    """ControlNetError naming `source` when its residuals would not fit the UNet or the VAE."""
    for name in _MATCHING:
        ours, theirs = unet.config.get(name), model.config.get(name)
        if _plain(ours) != _plain(theirs):
            raise ControlNetError(f"ControlNet {source!r} does not fit the UNet: its {name} is "
                                  f"{theirs!r}, the UNet's {ours!r}")
    factor = 2 ** (len(model.config.conditioning_embedding_out_channels) - 1)
    if factor != downscale:
        raise ControlNetError(f"ControlNet {source!r} downsamples its conditioning image {factor}x, "
                              f"the VAE {downscale}x")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


class ControlNet:
    """A loaded ControlNetModel and the residuals it adds to one batched UNet call."""

    def __init__(self, model, name: str, dtype: torch.dtype):
        self.model, self.name, self.dtype = model, name, dtype

    def residuals(self, sample: torch.Tensor, timesteps: torch.Tensor, embeds: torch.Tensor,
                  rows: Sequence[ControlRows]) -> dict[str, Any]:
        """UNet keyword arguments adding the ControlNet's residuals to the `rows` that use it.

        sample (B, C, h, w), timesteps (B,) and embeds (B, L, D) are the UNet call's inputs; the
        ControlNet runs on the listed rows only and the other rows get zero residuals, so each row
        gets what it would alone. Residuals are scaled per row (diffusers' conditioning_scale).
        """
        total = sample.shape[0]
        index = torch.cat([torch.arange(r.start, r.start + r.count) for r in rows]).to(sample.device)
        every_row = index.numel() == total  # rows are listed in order, without overlap
        if not every_row:
            sample, timesteps, embeds = sample[index], timesteps[index], embeds[index]
        cond = torch.cat([r.image.expand(r.count, -1, -1, -1) for r in rows]).to(self.dtype)
        scale = torch.cat([torch.full((r.count,), r.scale) for r in rows]).to(sample.device, self.dtype)
        scale = scale.view(-1, 1, 1, 1)
        down, mid = self.model(sample, timesteps, encoder_hidden_states=embeds, controlnet_cond=cond,
                               conditioning_scale=1.0, return_dict=False)

        def place(residual: torch.Tensor) -> torch.Tensor:
            residual = residual * scale
            if every_row:
                return residual
            full = residual.new_zeros((total, *residual.shape[1:]))
            full[index] = residual
            return full

        return {"down_block_additional_residuals": [place(r) for r in down],
                "mid_block_additional_residual": place(mid)}
