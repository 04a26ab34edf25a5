"""Where models come from: the trained demo (a diffusers folder in the package), built-in random
models, diffusers folders and hub ids; device/dtype."""
from __future__ import annotations

import logging
from typing import Any

import torch

from livecast.kernels.cpu import native_bf16

from .demo import DEMO, DEMO_SEED, DEMO_WEIGHTS_DIR, SPECS, build_random_components, demo_weights_shipped

logger = logging.getLogger(__name__)

TAESD_HUB_ID = "madebyollin/taesd"  # TAESD for SD 1.x/2.x latents (SD-Turbo included)

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
           "float16": torch.float16, "half": torch.float16, "fp32": torch.float32,
           "float32": torch.float32, "float": torch.float32}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """fp16 on CUDA; on a CPU bf16 where it has bf16 arithmetic, else float32; unless asked otherwise."""
    if dtype is None:
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if native_bf16() else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
        return _DTYPES[dtype.lower()]
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype}")
    return dtype


def load_components(name_or_path: str, *, tiny_vae: bool | str | None, seed: int | None,
                    dtype: torch.dtype) -> dict[str, Any]:
    """StreamPipeline constructor arguments for a built-in name, diffusers folder or hub id.

    "demo" loads the trained weights shipped in the package exactly as a diffusers folder;
    "demo-random" and "sd-turbo-shape" are built from configs with random weights (`seed`).

    Returns unet, vae (the one streaming uses), text_encoder, tokenizer, scheduler, name, demo and
    resolution (None: derived from the UNet's sample_size).
    """
    if name_or_path == "demo":
        # The trained demo is an ordinary diffusers folder; only its tiny VAE is shipped.
        if seed is not None:
            raise ValueError("seed only applies to the built-in random models "
                             "('demo-random', 'sd-turbo-shape'); the demo's weights are trained")
        if tiny_vae not in (None, True):
            raise ValueError("the trained demo ships only its own tiny VAE; pass tiny_vae=True or "
                             "use 'demo-random' for the KL VAE")
        if not demo_weights_shipped():
            logger.warning("streamdiff: the demo's weights are not in %s (build them with "
                           "`livecast train demo`); 'demo' uses the random build instead",
                           DEMO_WEIGHTS_DIR)
            return {**load_components("demo-random", tiny_vae=tiny_vae, seed=seed, dtype=dtype),
                    "name": "demo"}
        parts = _load_diffusers(str(DEMO_WEIGHTS_DIR), tiny_vae=str(DEMO_WEIGHTS_DIR / "tiny_vae"),
                                dtype=dtype)
        return {**parts, "name": "demo", "demo": True, "resolution": DEMO.resolution}
    if name_or_path in SPECS:
        seed = DEMO_SEED if seed is None else seed
        parts = build_random_components(name_or_path, seed=seed)
        use_tiny = True if tiny_vae is None else tiny_vae
        if isinstance(use_tiny, str):
            raise ValueError("built-in models bring their own tiny VAE; pass tiny_vae=True/False")
        vae = parts.pop("tiny_vae")
        if not use_tiny:
            vae = parts["vae"]
        parts["vae"] = vae
        return {**parts, "name": name_or_path, "demo": True,
                "resolution": SPECS[name_or_path].resolution}
    if seed is not None:
        raise ValueError("seed only applies to the built-in random models ('demo-random', "
                         "'sd-turbo-shape')")
    return _load_diffusers(name_or_path, tiny_vae=tiny_vae, dtype=dtype)


def _load_diffusers(path: str, *, tiny_vae: bool | str | None, dtype: torch.dtype) -> dict[str, Any]:
    # Imported here: loading is the only place these classes are needed.
    from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    logger.info("streamdiff: loading %s (%s)", path, dtype)
    common = {"torch_dtype": dtype}
    parts: dict[str, Any] = {
        "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet", **common),
        "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **common),
        "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
        # Only the config matters (betas, prediction type): streamdiff computes its own steps.
        "scheduler": EulerDiscreteScheduler.from_pretrained(path, subfolder="scheduler"),
    }
    if tiny_vae:
        source = TAESD_HUB_ID if tiny_vae is True else tiny_vae
        parts["vae"] = AutoencoderTiny.from_pretrained(source, **common)
    else:
        parts["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", **common)
    return {**parts, "name": str(path), "demo": False, "resolution": None}
