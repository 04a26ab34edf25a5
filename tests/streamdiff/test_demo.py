"""The built-in models: offline tokenizer, the watchable demo, SD-Turbo's shape."""
from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import UNet2DConditionModel

from livecast.kernels.cpu import native_bf16
from livecast.streamdiff import StreamPipeline
from livecast.streamdiff.demo import DEMO_SEED, SD_TURBO_SHAPE, build_random_components
from livecast.streamdiff.tokenizer import BOS_TOKEN, EOS_TOKEN, build_demo_tokenizer


def test_tokenizer_is_clip_shaped_and_offline():
    tok = build_demo_tokenizer()
    ids = tok("A photo of a CAT").input_ids
    assert tok.convert_ids_to_tokens(ids) == [BOS_TOKEN, "a</w>", "photo</w>", "of</w>", "a</w>",
                                              "cat</w>", EOS_TOKEN]
    # Words outside the merge list fall back to bytes, so any text tokenizes and round-trips.
    text = "zebra 🚀 ümlaut"
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
    padded = tok("word " * 200, padding="max_length", max_length=tok.model_max_length,
                 truncation=True).input_ids
    assert len(padded) == 77 and padded[-1] == tok.eos_token_id
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]


@pytest.fixture(scope="module")
def demo():
    return StreamPipeline.from_pretrained("demo")


def scene(shift: int) -> PIL.Image.Image:
    y, x = np.mgrid[0:256, 0:256]
    image = np.stack([x, y, 255 - x], -1).astype(np.uint8)
    image[((x - 96 - shift) ** 2 + (y - 128) ** 2) < 50**2] = (255, 255, 0)
    return PIL.Image.fromarray(image)


def test_demo_model_info_and_defaults(demo):
    info = demo.model_info
    assert info["name"] == "demo" and info["demo"] is True
    # auto dtype: bf16 only where the CPU computes it natively (emulated bf16 is ~20x slower)
    assert info["device"] == "cpu" and info["dtype"] == ("bfloat16" if native_bf16() else "float32")
    assert info["resolution"] == [256, 256] and info["vae"] == "tiny"


def test_demo_logs_that_weights_are_random(caplog):
    with caplog.at_level(logging.WARNING, logger="livecast.streamdiff.demo"):
        build_random_components("demo")
    assert f"demo weights (random, seed={DEMO_SEED})" in caplog.text


def test_demo_weights_are_reproducible():
    a, b = build_random_components("demo"), build_random_components("demo")
    for name in ("unet", "tiny_vae", "text_encoder"):
        for (key, pa), (_, pb) in zip(a[name].state_dict().items(), b[name].state_dict().items()):
            assert torch.equal(pa, pb), (name, key)


def test_demo_output_follows_the_input_and_the_prompt(demo):
    demo.prepare("a photo of a cat", seed=1)
    out = np.asarray(demo(scene(0))).astype(float)
    moved = np.asarray(demo(scene(60))).astype(float)
    demo.prepare("cyberpunk city at night, neon", seed=1)
    other_prompt = np.asarray(demo(scene(0))).astype(float)
    src = np.asarray(scene(0)).astype(float)
    # Not noise: the output's brightness correlates with the input's, pixel for pixel.
    correlation = np.corrcoef(src.mean(-1).ravel(), out.mean(-1).ravel())[0, 1]
    assert correlation > 0.5
    # Moving the circle moves the output; changing the prompt changes it too.
    assert np.abs(out - moved).mean() > 5
    assert np.abs(out - other_prompt).mean() > 1


def test_demo_txt2img_and_odd_sizes(demo):
    demo.prepare("abstract colorful pattern", strength=1.0, num_inference_steps=1)
    assert demo(None).size == (256, 256)
    demo.prepare("abstract colorful pattern")
    assert demo(scene(0).resize((320, 180))).size == (320, 180)


def test_demo_resolution_option():
    pipe = StreamPipeline.from_pretrained("demo", dtype="fp32", resolution=128)
    assert pipe.model_info["resolution"] == [128, 128] and pipe.model_info["dtype"] == "float32"
    assert pipe(scene(0)).size == (256, 256)
    with pytest.raises(ValueError, match="multiple of 64"):
        StreamPipeline.from_pretrained("demo", resolution=100)


def test_sd_turbo_shape_has_sd_turbo_unet_size():
    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **SD_TURBO_SHAPE.unet)
    assert sum(p.numel() for p in unet.parameters()) == pytest.approx(865.9e6, rel=1e-3)
    assert SD_TURBO_SHAPE.resolution == 512 and unet.config.cross_attention_dim == 1024
