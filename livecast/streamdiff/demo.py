"""Built-in models. Nothing is downloaded.

- `demo`: the trained demo (live on 2 CPU cores). Its weights ship in the package
  (`weights/demo/`, a diffusers folder made by `livecast train demo`, see `training/`) and load
  through the same `from_pretrained` path as any diffusers folder.
- `demo-random`: the same family built from configs with random weights (seeded), for timing.
- `sd-turbo-shape`: SD-Turbo's exact architecture with random weights, for timing.

The random builds below:

The demo keeps Stable Diffusion's topology at reduced width so every code path (cross-attention,
KL and tiny VAEs, CLIP text encoder, 8x latent downsampling) is exercised for real:
- UNet: SD's 4-level layout at 1/10 width; attention only at the 16x16 and 8x8 levels, because
  self-attention over 32x32 latents doubled the step time on 2 cores.
- AutoencoderKL: SD's VAE at 1/8 width (same depth), the VAE diffusers pipelines use by default.
- AutoencoderTiny: TAESD's layout at 1/8 width, the fast VAE StreamDiffusion swaps in.
Both VAEs shrink by the same factor, so their cost ratio (and the speedup the tiny VAE buys)
stays close to SD's.
Random weights alone show nothing of the input; `demo_weights` makes them watchable.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from .demo_weights import shape_demo_weights
from .tokenizer import build_demo_tokenizer

logger = logging.getLogger(__name__)

DEMO_SEED = 20240601

# The trained demo: a diffusers folder shipped in the package, and how /health describes it.
DEMO_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights" / "demo"
TRAINED_LABEL = "trained by livecast on procedural scenes"
RANDOM_LABEL = "random weights"

# SD-Turbo's scheduler: trailing spacing puts 1-step sampling at t=999, 2 steps at (999, 499).
TURBO_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1,
                       timestep_spacing="trailing")

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    resolution: int  # default square image side in pixels
    unet: dict[str, Any]
    vae: dict[str, Any]
    tiny_vae: dict[str, Any]
    text_encoder: dict[str, Any]


DEMO = ModelSpec(
    name="demo",
    resolution=256,
    unet=dict(sample_size=32, block_out_channels=(32, 64, 128, 128), layers_per_block=1,
              down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                "DownBlock2D"),
              up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
              cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32),
    vae=dict(block_out_channels=(16, 32, 64, 64), layers_per_block=2, norm_num_groups=16,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             latent_channels=4, sample_size=256, scaling_factor=3.0),
    # Scaling puts the near-identity demo latents (see demo_weights) at SD-like unit variance.
    tiny_vae=dict(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                  scaling_factor=6.0),
    text_encoder=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, projection_dim=128, hidden_act="quick_gelu"),
)

# Values from stabilityai/sd-turbo's model_index components (SD 2.1 architecture, 512 px).
SD_TURBO_SHAPE = ModelSpec(
    name="sd-turbo-shape",
    resolution=512,
    unet=dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
              down_block_types=_SD_DOWN, up_block_types=_SD_UP, cross_attention_dim=1024,
              attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             latent_channels=4, sample_size=768, scaling_factor=0.18215),
    tiny_vae=dict(),  # AutoencoderTiny's defaults are TAESD
    text_encoder=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                      num_attention_heads=16, projection_dim=512, hidden_act="gelu",
                      vocab_size=49408),
)

# Names build_random_components accepts: "demo" and "demo-random" are the same random build.
SPECS = {"demo": DEMO, "demo-random": DEMO, SD_TURBO_SHAPE.name: SD_TURBO_SHAPE}
# Names StreamPipeline.from_pretrained accepts without a path: the trained demo and random builds.
BUILT_IN = ("demo", "demo-random", SD_TURBO_SHAPE.name)


def describe_weights(name: str, demo: bool) -> str | None:
    """What /health and the pages say about a pipeline's weights (None: real, loaded weights)."""
    if not demo:
        return None
    return TRAINED_LABEL if name == "demo" and demo_weights_shipped() else RANDOM_LABEL


def demo_weights_shipped() -> bool:
    """Whether the trained demo's folder is in the package (else `demo` builds `demo-random`)."""
    return (DEMO_WEIGHTS_DIR / "unet").is_dir()


def build_random_components(name: str, seed: int = DEMO_SEED) -> dict[str, Any]:
    """Components of the built-in model `name` with weights drawn under `torch.manual_seed(seed)`.

    Returns the diffusers component dict (`unet`, `vae`, `text_encoder`, `tokenizer`, `scheduler`)
    plus `tiny_vae`. Weights are fp32 on the CPU; callers cast and move them.
    """
    if name not in SPECS:
        raise ValueError(f"unknown built-in random model {name!r}; choose one of {sorted(SPECS)}")
    spec = SPECS[name]
    tokenizer = build_demo_tokenizer()
    # The demo vocab is a subset of CLIP's id range, so SD-Turbo's 49408-row table accepts it.
    text_kwargs = {"vocab_size": len(tokenizer), **spec.text_encoder}
    text_config = CLIPTextConfig(max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, **text_kwargs)
    logger.warning("streamdiff: building %r with demo weights (random, seed=%d): output is "
                   "abstract, not a trained model", name, seed)
    # A local generator state, restored afterwards, keeps the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = {
            "unet": UNet2DConditionModel(in_channels=4, out_channels=4, **spec.unet),
            "vae": AutoencoderKL(**spec.vae),
            "tiny_vae": AutoencoderTiny(**spec.tiny_vae),
            "text_encoder": CLIPTextModel(text_config),
        }
    for module in components.values():
        module.eval().requires_grad_(False)
    components["tokenizer"] = tokenizer
    components["scheduler"] = EulerDiscreteScheduler(**TURBO_SCHEDULER)
    if spec is DEMO:  # sd-turbo-shape is only timed; its pictures don't matter
        shape_demo_weights(components, torch.Generator().manual_seed(seed))
    return components
