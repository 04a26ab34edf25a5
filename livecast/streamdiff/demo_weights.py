"""Make the random demo model watchable, without training and without downloads.

Default-initialized VAEs map any frame to near-black and a random UNet's noise guess is
unrelated to the noise, so raw random weights show nothing of the input. Three cheap,
deterministic edits (about half a second on 2 cores) fix that:
1. VAEs start near the identity: plain convolutions become Dirac (identity) kernels, stride-2
   ones a small blur, and every residual branch's last layer is scaled down. Latents are then
   a downsampled picture of the frame, which the decoder upsamples back.
2. The prompt path is amplified (token embeddings, cross-attention outputs) so the random text
   encoder's differences between prompts reach the UNet features.
3. The UNet's output convolution is solved in closed form (ridge regression) to predict the noise
   in synthetic noised latents from the random features before it: a weak but real denoiser.
The rest stays random, so outputs are abstract textures over the input's layout.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from torch import nn

from .codec import LatentCodec
from .schedule import trailing_timesteps

RESIDUAL_SCALE = 0.05
TOKEN_EMBEDDING_GAIN = 10.0
CROSS_ATTENTION_GAIN = 8.0
FIT_PROMPTS = ("", "a photo of a cat", "cyberpunk city at night, neon",
               "oil painting of mountains at sunset", "abstract colorful pattern", "a dog in the snow")


@torch.no_grad()
def shape_demo_weights(parts: dict[str, Any], generator: torch.Generator) -> None:
    """Apply the three edits above in place to built-in random components (fp32, CPU)."""
    for vae in (parts["vae"], parts["tiny_vae"]):
        near_identity_(vae, generator)
    parts["text_encoder"].embeddings.token_embedding.weight.mul_(TOKEN_EMBEDDING_GAIN)
    for name, module in parts["unet"].named_modules():
        if name.endswith("attn2"):
            module.to_out[0].weight.mul_(CROSS_ATTENTION_GAIN)
    fit_noise_readout_(parts, generator)


def near_identity_(vae: nn.Module, generator: torch.Generator) -> None:
    branch_ends = set()
    for module in vae.modules():
        if isinstance(module, ResnetBlock2D):
            branch_ends.add(module.conv2)
        elif isinstance(module, AutoencoderTinyBlock):
            branch_ends.add(module.conv[-1])
        elif isinstance(module, Attention):
            branch_ends.add(module.to_out[0])
    blur = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
    for module in vae.modules():
        if module in branch_ends:
            module.weight.mul_(RESIDUAL_SCALE)
        elif isinstance(module, nn.Conv2d):
            out_ch, in_ch, k, _ = module.weight.shape
            kernel = torch.zeros(k, k)
            kernel[k // 2, k // 2] = 1.0
            if module.stride[0] == 2 and k == 3:
                kernel = blur  # anti-aliased downsampling
            weight = torch.zeros_like(module.weight)
            for i in range(min(out_ch, in_ch)):
                weight[i, i] = kernel
            # A little seeded noise so channels beyond RGB carry texture, not zeros.
            weight += 0.02 * torch.randn(weight.shape, generator=generator) / (in_ch * k * k) ** 0.5
            module.weight.copy_(weight)
            if module.bias is not None:
                module.bias.zero_()


def synthetic_images(num: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(num, 3, size, size) in [-1, 1]: smooth colour fields with a few flat rectangles."""
    grid = torch.rand(num, 3, 6, 6, generator=generator)
    images = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    for image in images:
        for _ in range(3):
            x, y = torch.randint(0, size - size // 8, (2,), generator=generator).tolist()
            w, h = torch.randint(size // 8, size // 2, (2,), generator=generator).tolist()
            image[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=generator)
    return images * 2 - 1


def fit_noise_readout_(parts: dict[str, Any], generator: torch.Generator, num: int = 8,
                       ridge: float = 1e-3) -> None:
    unet, conv_out = parts["unet"], parts["unet"].conv_out
    latents = LatentCodec(parts["tiny_vae"], torch.float32).encode(synthetic_images(num, 128, generator))
    tokens = parts["tokenizer"](list(FIT_PROMPTS), padding="max_length", truncation=True,
                                max_length=parts["tokenizer"].model_max_length, return_tensors="pt")
    embeds = parts["text_encoder"](tokens.input_ids)[0]
    embeds = embeds[torch.randint(0, len(FIT_PROMPTS), (num,), generator=generator)]
    # The timesteps streams actually visit with 1-4 step trailing schedules.
    choices = torch.as_tensor(trailing_timesteps(1000, 4))
    timesteps = choices[torch.randint(0, len(choices), (num,), generator=generator)]
    alphas_cumprod = DDPMScheduler.from_config(parts["scheduler"].config).alphas_cumprod
    ac = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = ac.sqrt() * latents + (1 - ac).sqrt() * noise
    captured = {}
    hook = conv_out.register_forward_pre_hook(lambda _m, args: captured.update(x=args[0]))
    try:
        unet(noisy, timesteps, encoder_hidden_states=embeds)
    finally:
        hook.remove()
    # conv_out is linear in its 3x3 input patches: solve for it directly.
    k = conv_out.kernel_size[0]
    patches = F.unfold(captured["x"], k, padding=k // 2).transpose(1, 2).flatten(0, 1)
    features = torch.cat([patches, torch.ones(patches.shape[0], 1)], 1).double()
    targets = noise.permute(0, 2, 3, 1).flatten(0, 2).double()
    gram = features.T @ features + ridge * features.shape[0] * torch.eye(features.shape[1]).double()
    solution = torch.linalg.solve(gram, features.T @ targets)  # (in*k*k + 1, out)
    conv_out.weight.copy_(solution[:-1].T.reshape(conv_out.weight.shape).float())
    conv_out.bias.copy_(solution[-1].float())
