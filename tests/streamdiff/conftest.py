"""Tiny diffusers components (diffusers' own test sizes) and a few frames, shared by the tests."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from livecast.streamdiff import StreamPipeline
from livecast.streamdiff.demo import TURBO_SCHEDULER
from livecast.streamdiff.tokenizer import build_demo_tokenizer

SIZE = 32  # test frames are 32x32; both tiny VAEs downsample 2x, so latents are 16x16


def tiny_components(seed: int = 0, tiny_vae: bool = False) -> dict:
    torch.manual_seed(seed)
    tokenizer = build_demo_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32)
    if tiny_vae:
        vae = AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                              num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1))
    else:
        vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    for module in (unet, vae, text_encoder):
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": EulerDiscreteScheduler(**TURBO_SCHEDULER)}


def make_pipe(seed: int = 0, tiny_vae: bool = False, **kwargs) -> StreamPipeline:
    kwargs.setdefault("dtype", torch.float32)
    kwargs.setdefault("device", "cpu")
    return StreamPipeline(**tiny_components(seed, tiny_vae), resolution=SIZE, **kwargs)


def frame(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> PIL.Image.Image:
    """A smooth random RGB frame (structured, so VAEs and the similarity filter see content)."""
    rng = np.random.default_rng(seed)
    coarse = PIL.Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    return coarse.resize(size, PIL.Image.BILINEAR)


def pixels(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


class UNetCalls:
    """Records the batch size (rows) of every UNet forward."""

    def __init__(self, unet: torch.nn.Module):
        self.rows: list[int] = []
        self._hook = unet.register_forward_pre_hook(lambda _m, args: self.rows.append(args[0].shape[0]))

    def take(self) -> list[int]:
        rows, self.rows = self.rows, []
        return rows


@pytest.fixture
def pipe() -> StreamPipeline:
    return make_pipe()
