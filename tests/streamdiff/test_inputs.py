"""Frames of any mode, layout and size in; clear errors for what can't be processed."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from livecast.streamdiff import StreamParams, StreamPipeline
from livecast.streamdiff.image import fit, to_pil
from tests.streamdiff.conftest import frame, make_pipe, pixels


@pytest.fixture(scope="module")
def prepared():
    pipe = make_pipe()
    pipe.prepare("a cat", seed=1)
    return pipe


def rgb(size=(32, 32)) -> PIL.Image.Image:
    return frame(7, size)


@pytest.mark.parametrize("convert", [
    lambda im: im.convert("RGBA"),
    lambda im: im.convert("L"),
    lambda im: im.convert("P"),
    lambda im: np.asarray(im),
    lambda im: np.asarray(im.convert("L")),
    lambda im: np.asarray(im).astype(np.float32) / 255,
    lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1),
    lambda im: torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 255,
    lambda im: torch.from_numpy(np.asarray(im.convert("L")).copy())[None],
], ids=["rgba", "gray", "palette", "np-uint8", "np-gray", "np-float", "torch-chw", "torch-bchw",
        "torch-gray"])
def test_frame_kinds_are_converted(prepared, convert):
    out = prepared(convert(rgb()))
    assert out.mode == "RGB" and out.size == (32, 32)


def test_equivalent_frames_give_identical_outputs(prepared):
    image = rgb()
    as_pil = pixels(prepared(image))
    as_tensor = pixels(prepared(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)))
    as_rgba = pixels(prepared(image.convert("RGBA")))
    assert np.array_equal(as_pil, as_tensor) and np.array_equal(as_pil, as_rgba)


@pytest.mark.parametrize("size", [(50, 30), (17, 64), (32, 32), (100, 100), (1, 1)])
def test_output_has_the_input_size(prepared, size):
    assert prepared(rgb(size)).size == size


def test_aspect_is_kept_by_padding_not_stretching():
    wide = torch.zeros(3, 32, 64)
    wide[0, :, :32] = 1.0  # left half red
    batch, box = fit(wide, 32, 32)
    assert batch.shape == (1, 3, 32, 32) and box == (0, 8, 32, 16)
    assert torch.equal(batch[0, :, :8], batch[0, :, 8:9].expand(-1, 8, -1))  # edge padding
    assert batch[0, 0, 16, :14].min() == 1.0 and batch[0, 0, 16, 18:].max() == -1.0
    back = pixels(to_pil(batch[0], box, (64, 32)))
    assert back.shape == (32, 64, 3)
    assert back[:, :28, 0].min() == 255 and back[:, 36:, 0].max() == 0


@pytest.mark.parametrize("bad,match", [
    (PIL.Image.new("RGB", (0, 10)), "empty"),
    (np.zeros((10, 0, 3), np.uint8), "empty"),
    (torch.zeros(3, 0, 5), "empty"),
    (PIL.Image.new("L", (9000, 2)), "too large"),
    (torch.zeros(3, 1, 1, dtype=torch.uint8).expand(3, 5000, 5000), "too large"),
    (np.zeros((4, 4, 2), np.uint8), "shape"),
    (torch.zeros(2, 3, 4, 4), "shape"),
    (np.zeros((4, 4, 3), np.int32), "dtype"),
    (torch.full((3, 4, 4), float("nan")), "NaN"),
    ("frame.png", "PIL image"),
])
def test_bad_frames_raise_value_error(prepared, bad, match):
    with pytest.raises(ValueError, match=match):
        prepared(bad)


def test_empty_prompt_is_allowed():
    pipe = make_pipe()
    pipe.prepare("")
    assert pipe(rgb()).size == (32, 32)
    assert pipe(None).size == (32, 32)


def test_call_without_prepare_uses_defaults():
    pipe = make_pipe()
    assert pipe(rgb()).size == (32, 32)
    assert pipe.params == StreamParams()


def test_prepare_takes_stream_params_fields_and_their_defaults():
    pipe = make_pipe()
    pipe.prepare()
    assert pipe.params == StreamParams()
    pipe.prepare("a cat", t_index_list=[0, 1], cfg_type="full")
    assert pipe.params == StreamParams(prompt="a cat", t_index_list=(0, 1), cfg_type="full")


@pytest.mark.parametrize("kwargs,match", [
    (dict(strength=0.0), "strength"),
    (dict(strength=1.5), "strength"),
    (dict(num_inference_steps=2, strength=0.4), "no denoising step"),
    (dict(cfg_type="half"), "cfg_type"),
    (dict(schedule="ddim"), "schedule"),
    (dict(t_index_list=[3, 1], num_inference_steps=4), "t_index_list"),
    (dict(t_index_list=[4], num_inference_steps=4), "t_index_list"),
    (dict(t_index_list=[]), "t_index_list"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(seed=-1), "seed"),
    (dict(width=30), "multiple of 4"),
    (dict(prompt=None), "prompt"),
    (dict(similarity_threshold=0.0), "similarity_threshold"),
])
def test_bad_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_pipe().prepare(**kwargs)


def test_working_size_can_differ_from_the_default():
    pipe = make_pipe()
    pipe.prepare(width=48, height=16)
    assert pipe(rgb((96, 32))).size == (96, 32)
    assert pipe(None).size == (48, 16)


def test_model_info():
    info = make_pipe().model_info
    assert {"name", "demo", "device", "dtype", "resolution"} <= set(info)
    assert info["demo"] is False and info["dtype"] == "float32" and info["resolution"] == [32, 32]


def test_from_pretrained_loads_a_diffusers_folder(tmp_path):
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    from tests.streamdiff.conftest import tiny_components

    parts = tiny_components(seed=3)
    StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(tmp_path / "sd")
    tiny_components(seed=4, tiny_vae=True)["vae"].save_pretrained(tmp_path / "taesd")
    loaded = StreamPipeline.from_pretrained(str(tmp_path / "sd"), device="cpu", dtype="fp32",
                                            resolution=32)
    in_memory = StreamPipeline(**tiny_components(seed=3), device="cpu", dtype="fp32", resolution=32)
    assert loaded.model_info["demo"] is False and loaded.model_info["vae"] == "kl"
    for pipe in (loaded, in_memory):
        pipe.prepare("a cat", seed=1)
    image = frame(1)
    assert np.array_equal(pixels(loaded(image)), pixels(in_memory(image)))
    tiny = StreamPipeline.from_pretrained(str(tmp_path / "sd"), dtype="fp32", resolution=32,
                                          tiny_vae=str(tmp_path / "taesd"))
    assert isinstance(tiny.vae, AutoencoderTiny) and tiny(image).size == (32, 32)
    with pytest.raises(ValueError, match="seed"):
        StreamPipeline.from_pretrained(str(tmp_path / "sd"), seed=1)
