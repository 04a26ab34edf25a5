"""Image <-> latent through either VAE kind, with the scaling diffusers' pipelines apply."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, AutoencoderTiny


class LatentCodec:
    """Encodes images in [-1, 1] to UNet-scale latents and back, in batches.

    AutoencoderKL encodes to the posterior mean (`mode()`): a live stream wants the same latent
    for the same frame, not a fresh sample. AutoencoderTiny (TAESD) has no posterior at all.
    """

    def __init__(self, vae: torch.nn.Module, dtype: torch.dtype):
        if not isinstance(vae, (AutoencoderKL, AutoencoderTiny)):
            raise ValueError(f"vae must be an AutoencoderKL or AutoencoderTiny, got {type(vae).__name__}")
        self.vae = vae
        self.tiny = isinstance(vae, AutoencoderTiny)
        config = vae.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(getattr(config, "shift_factor", None) or 0.0)
        # SD's KL VAE overflows in fp16 (its config says force_upcast); it stays fp32 then.
        upcast = dtype == torch.float16 and bool(getattr(config, "force_upcast", False)) and not self.tiny
        self.dtype = torch.float32 if upcast else dtype
        blocks = config.encoder_block_out_channels if self.tiny else config.block_out_channels
        self.downscale = 2 ** (len(blocks) - 1)  # pixels per latent cell
        self.latent_channels = int(config.latent_channels)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) float32 latents."""
        images = images.to(self.dtype)
        if self.tiny:
            latents = self.vae.encode(images, return_dict=False)[0]
        else:
            latents = self.vae.encode(images, return_dict=False)[0].mode()
        return (latents.float() - self.shift_factor) * self.scaling_factor

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, h*f, w*f) float32 images in about [-1, 1]."""
        latents = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents.to(self.dtype), return_dict=False)[0].float()
