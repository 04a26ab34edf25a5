"""StreamPipeline against diffusers' own pipelines on the same components, prompt, seed, strength.

Tolerance: outputs are 8-bit images; at most 1 level of difference per pixel is allowed (our
scheduler arithmetic is exact algebra of diffusers' Euler/LCM steps but not the same float ops),
and the mean difference must stay below 0.1 levels.
diffusers' img2img samples the KL posterior with the generator; a stream uses its mean (the same
frame must give the same latent), so the reference is run with `sample` patched to `mode`.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler, LCMScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from livecast.streamdiff import StreamPipeline
from tests.streamdiff.conftest import SIZE, frame, make_pipe, pixels, tiny_components

MAX_LEVELS = 1
MAX_MEAN_LEVELS = 0.1


@pytest.fixture(autouse=True)
def posterior_mean(monkeypatch):
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())


def reference(cls, pipe):
    ref = cls(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
              scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None,
              requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


def assert_close(expected, actual):
    assert expected.size == actual.size and actual.mode == "RGB"
    diff = abs(pixels(expected) - pixels(actual))
    assert diff.max() <= MAX_LEVELS and diff.mean() <= MAX_MEAN_LEVELS, (diff.max(), diff.mean())
    assert pixels(expected).std() > 5  # a flat image would make the comparison vacuous


@pytest.mark.parametrize("tiny_vae", [False, True], ids=["kl-vae", "tiny-vae"])
@pytest.mark.parametrize("seed,strength,prompt", [(7, 0.5, "a cat"), (123, 1.0, "")])
def test_one_step_img2img_matches_diffusers(tiny_vae, seed, strength, prompt):
    pipe = make_pipe(tiny_vae=tiny_vae)
    image = frame(1)
    # num_inference_steps=2 with strength 0.5 is SD-Turbo's one-step img2img (t=499).
    steps = 2 if strength == 0.5 else 1
    expected = reference(StableDiffusionImg2ImgPipeline, pipe)(
        prompt, image=image, num_inference_steps=steps, strength=strength, guidance_scale=0.0,
        generator=torch.Generator().manual_seed(seed)).images[0]
    pipe.prepare(prompt, seed=seed, strength=strength, num_inference_steps=steps)
    assert_close(expected, pipe(image))


@pytest.mark.parametrize("tiny_vae", [False, True], ids=["kl-vae", "tiny-vae"])
def test_one_step_txt2img_matches_diffusers(tiny_vae):
    pipe = make_pipe(tiny_vae=tiny_vae)
    expected = reference(StableDiffusionPipeline, pipe)(
        "a photo of a dog", num_inference_steps=1, guidance_scale=0.0, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(3)).images[0]
    pipe.prepare("a photo of a dog", seed=3, strength=1.0, num_inference_steps=1)
    assert_close(expected, pipe(None))


def test_full_cfg_matches_diffusers_guidance():
    pipe = make_pipe()
    image = frame(2)
    expected = reference(StableDiffusionImg2ImgPipeline, pipe)(
        "a cat", negative_prompt="blurry", image=image, num_inference_steps=2, strength=0.5,
        guidance_scale=3.0, generator=torch.Generator().manual_seed(5)).images[0]
    pipe.prepare("a cat", negative_prompt="blurry", seed=5, strength=0.5, num_inference_steps=2,
                 guidance_scale=3.0, cfg_type="full")
    assert_close(expected, pipe(image))


def test_lcm_schedule_matches_diffusers_lcm_scheduler():
    pipe = make_pipe()
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    image = frame(3)
    expected = reference(StableDiffusionImg2ImgPipeline, pipe)(
        "neon city", image=image, num_inference_steps=2, strength=0.5, guidance_scale=0.0,
        generator=torch.Generator().manual_seed(11)).images[0]
    pipe.prepare("neon city", seed=11, strength=0.5, num_inference_steps=2, schedule="lcm")
    assert_close(expected, pipe(image))


def pipe_predicting(prediction_type: str) -> StreamPipeline:
    """The tiny components with a scheduler for an x0 ("sample") or v model (the trained demo is
    an x0 model on a gentler schedule)."""
    parts = tiny_components()
    parts["scheduler"] = EulerDiscreteScheduler.from_config(
        parts["scheduler"].config, prediction_type=prediction_type, beta_start=0.0005, beta_end=0.005)
    return StreamPipeline(**parts, resolution=SIZE, dtype=torch.float32, device="cpu")


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
def test_x0_and_v_models_match_diffusers(prediction_type):
    pipe = pipe_predicting(prediction_type)
    image = frame(4)
    img2img = reference(StableDiffusionImg2ImgPipeline, pipe)
    expected = img2img("a cat", image=image, num_inference_steps=2, strength=0.5, guidance_scale=0.0,
                       generator=torch.Generator().manual_seed(7)).images[0]
    pipe.prepare("a cat", seed=7, strength=0.5, num_inference_steps=2)
    assert_close(expected, pipe(image))
    # guidance mixes the two predictions in epsilon space; for these models that is the same
    # mix of their outputs (eps is affine in x0 and in v at fixed x_t), which diffusers does
    expected = img2img("a cat", negative_prompt="blurry", image=image, num_inference_steps=2, strength=0.5,
                       guidance_scale=3.0, generator=torch.Generator().manual_seed(5)).images[0]
    pipe.prepare("a cat", negative_prompt="blurry", seed=5, strength=0.5, num_inference_steps=2,
                 guidance_scale=3.0, cfg_type="full")
    assert_close(expected, pipe(image))
    expected = reference(StableDiffusionPipeline, pipe)(
        "a photo of a dog", num_inference_steps=1, guidance_scale=0.0, height=SIZE, width=SIZE,
        generator=torch.Generator().manual_seed(3)).images[0]
    pipe.prepare("a photo of a dog", seed=3, strength=1.0, num_inference_steps=1)
    assert_close(expected, pipe(None))
