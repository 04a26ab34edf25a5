"""ControlNet (canny) in the stream pipeline: the edge map, parity with diffusers'
StableDiffusionControlNetImg2ImgPipeline on the same tiny components, per-row scales in one
batched UNet call, and the settings' checks.

Tiny components are diffusers' test sizes (block_out_channels=(32, 64), a 2x VAE); the ControlNet
is ControlNetModel.from_unet on that UNet with its zero convolutions drawn at random, so its
residuals visibly change the output (all-zero ones would make parity vacuous; asserted below).
"""
from __future__ import annotations

import asyncio
import base64
import io
import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionControlNetImg2ImgPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from livecast.services.media.config import MediaConfig
from livecast.services.media.service import MediaService
from livecast.services.media.stream_settings import SETTABLE, StreamSettings, param_error_name
from livecast.streamdiff import StreamBatcher, StreamPipeline
from livecast.streamdiff.canny import canny, canny_control_image
from livecast.streamdiff.config import StreamParams
from livecast.streamdiff.controlnet import ControlNetError, build_controlnet, conditioning_channels
from livecast.streamdiff.image import fit, frame_to_tensor
from tests.streamdiff.conftest import SIZE, UNetCalls, make_pipe, pixels, tiny_components

ZERO_CONV_STD = 0.3  # large enough that the ControlNet moves the output by many levels


@pytest.fixture(autouse=True)
def posterior_mean(monkeypatch):
    # As in test_diffusers_parity: a stream encodes a frame to its posterior mean.
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())


def controlnet_pipe(seed: int = 0, **kwargs) -> StreamPipeline:
    parts = tiny_components(seed)
    controlnet = build_controlnet(parts["unet"], downscale=2, seed=seed + 1, zero_conv_std=ZERO_CONV_STD)
    return StreamPipeline(**parts, resolution=SIZE, dtype=torch.float32, device="cpu",
                          controlnet=controlnet, **kwargs)


def square(side: int = SIZE, low: int = 8, high: int = 24, value: int = 255) -> PIL.Image.Image:
    """A bright square (pixels low..high-1) on black."""
    array = np.zeros((side, side, 3), np.uint8)
    array[low:high, low:high] = value
    return PIL.Image.fromarray(array)


def edges_of(image: PIL.Image.Image, low: float = 100, high: float = 200) -> np.ndarray:
    batch = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    return canny(batch, low, high)[0, 0].numpy().astype(bool)


def control_pil(pipe: StreamPipeline, image: PIL.Image.Image, low=100.0, high=200.0) -> PIL.Image.Image:
    """The canny map the stream computes for `image`, as the image handed to diffusers."""
    batch, _ = fit(frame_to_tensor(image, pipe.device), SIZE, SIZE)
    control = canny_control_image(batch, low, high)[0]
    return PIL.Image.fromarray((control * 255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def shapes(seed: int) -> PIL.Image.Image:
    """A frame with edges: two overlapping rectangles of different colours over a gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    array = np.stack([x * 4, y * 4, 128 + 0 * x], -1).astype(np.uint8)
    for _ in range(2):
        top, left = rng.integers(2, SIZE // 2, 2)
        array[top:top + 12, left:left + 10] = rng.integers(0, 256, 3)
    return PIL.Image.fromarray(array)


# -- canny ------------------------------------------------------------------------------------

def test_canny_finds_a_squares_border_and_nothing_inside():
    edges = edges_of(square())
    ring = np.zeros_like(edges)
    ring[7:25, 7:25] = True
    ring[9:23, 9:23] = False  # the border, one pixel either side of it
    assert edges.any() and not (edges & ~ring).any()
    # every side is found, one pixel thick (non-maximum suppression)
    for line in (edges[12:20, 6:11], edges[12:20, 21:26], edges[6:11, 12:20].T, edges[21:26, 12:20].T):
        assert (line.sum(axis=1) == 1).all(), line


def test_canny_thresholds_and_hysteresis():
    faint = square(value=20)  # a Sobel step of 20 levels: |dx| + |dy| = 80 on a side
    assert not edges_of(faint).any()
    assert edges_of(faint, low=50, high=70).any()
    assert not edges_of(square(), low=2040, high=2040).any()
    # hysteresis: a weak border (only above `low`) is kept where it touches a strong one
    array = np.zeros((SIZE, SIZE, 3), np.uint8)
    array[4:12, 4:28] = 255  # strong: a full-contrast bar
    # 30 levels: 120 on a side, 180 at a corner (|dx| + |dy|), between the thresholds
    array[12:20, 4:28] = 30  # weak, touching the bar
    array[24:30, 4:28] = 30  # weak, alone
    edges = edges_of(PIL.Image.fromarray(array), low=100, high=200)
    assert edges[13:18, 2:6].any()  # the touching weak part's left side survives
    assert not edges[23:31].any()  # the lone weak one does not
    assert edges_of(PIL.Image.fromarray(array), low=150, high=150)[23:31].any()


def test_canny_takes_per_frame_thresholds_in_one_batch():
    batch = torch.from_numpy(np.stack([np.asarray(square(value=20))] * 2)).permute(0, 3, 1, 2).float()
    edges = canny(batch, torch.tensor([50.0, 100.0]), torch.tensor([70.0, 200.0]))
    assert edges[0].any() and not edges[1].any()
    assert torch.equal(edges[0], canny(batch[:1], 50, 70)[0])


# -- parity with diffusers ----------------------------------------------------------------------

@pytest.mark.parametrize("scale,guidance", [(1.0, 0.0), (0.5, 0.0), (0.8, 3.0)],
                         ids=["scale-1", "scale-0.5", "full-cfg"])
def test_one_step_img2img_matches_diffusers_controlnet_pipeline(scale, guidance):
    pipe = controlnet_pipe()
    image = shapes(1)
    control = control_pil(pipe, image)
    assert 0 < (pixels(control) > 0).mean() < 0.5  # the map has edges, not everything
    reference = StableDiffusionControlNetImg2ImgPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        controlnet=pipe.controlnet.model, scheduler=pipe.scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    reference.set_progress_bar_config(disable=True)
    # num_inference_steps=2 with strength 0.5 is SD-Turbo's one-step img2img (t=499).
    # With guidance, diffusers runs the ControlNet on the unconditional rows too, as a stream does.
    expected = reference("a cat", negative_prompt="blurry", image=image, control_image=control,
                         num_inference_steps=2, strength=0.5, guidance_scale=guidance,
                         controlnet_conditioning_scale=scale,
                         generator=torch.Generator().manual_seed(7)).images[0]
    pipe.prepare("a cat", negative_prompt="blurry", seed=7, strength=0.5, num_inference_steps=2,
                 guidance_scale=guidance, cfg_type="full", controlnet_scale=scale)
    actual = pipe(image)
    diff = abs(pixels(expected) - pixels(actual))
    assert diff.max() <= 1 and diff.mean() <= 0.1, (diff.max(), diff.mean())
    # The ControlNet mattered: without it the output is far from the reference.
    pipe.update(controlnet_scale=0.0)
    assert abs(pixels(expected) - pixels(pipe(image))).mean() > 2


# -- per-row scales in one batched call ----------------------------------------------------------

def test_mixed_scales_share_one_unet_call_and_equal_each_stream_alone():
    pipe = controlnet_pipe()
    frames = [shapes(10), shapes(11), shapes(12)]
    scales = [1.0, 0.5, 0.0]
    settings = dict(prompt="a cat", strength=0.5, num_inference_steps=2)
    states = [pipe.new_state(StreamParams(seed=i, controlnet_scale=s, **settings))
              for i, s in enumerate(scales)]
    unet_calls, controlnet_rows = UNetCalls(pipe.unet), UNetCalls(pipe.controlnet.model)
    together = pipe.run(list(zip(states, frames)))
    assert unet_calls.take() == [3] and controlnet_rows.take() == [2]  # the scale-0 row skips it
    for i, (scale, image) in enumerate(zip(scales, frames)):
        pipe.prepare(seed=i, controlnet_scale=scale, **settings)
        alone = pipe(image)
        diff = abs(pixels(alone) - pixels(together[i]))
        assert diff.max() <= 1 and diff.mean() <= 0.1, (i, diff.max(), diff.mean())
    # and the three differ from each other's scale: scale 0.5 is neither 1.0 nor 0
    pipe.prepare(seed=1, controlnet_scale=1.0, **settings)
    assert abs(pixels(pipe(frames[1])) - pixels(together[1])).mean() > 1


def test_the_default_scale_follows_the_pipeline_and_the_frame():
    pipe = controlnet_pipe()
    assert pipe.model_info["controlnet"] == "custom"
    assert pipe.control_scale(StreamParams(), txt2img=False) == 1.0
    assert pipe.control_scale(StreamParams(), txt2img=True) == 0.0
    plain = make_pipe()
    assert plain.model_info["controlnet"] is None
    assert plain.control_scale(StreamParams(), txt2img=False) == 0.0
    # default (None) on an img2img frame: the ControlNet runs at 1.0
    calls = UNetCalls(pipe.controlnet.model)
    pipe.prepare("a cat", num_inference_steps=2, strength=0.5)
    pipe(shapes(3))
    pipe(None)  # txt2img: no edges to follow, no ControlNet call
    assert calls.take() == [1]


def test_stream_batch_rows_take_the_new_frames_map():
    pipe = controlnet_pipe()
    pipe.prepare("a cat", num_inference_steps=4, strength=0.75, controlnet_scale=0.8)  # 3 slots
    unet_calls, controlnet_rows = UNetCalls(pipe.unet), UNetCalls(pipe.controlnet.model)
    for i in range(3):
        pipe(shapes(20 + i))
    assert unet_calls.take() == [1, 1, 1, 3, 3] == controlnet_rows.take()


# -- checks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf, 2.5, True, "1"])
def test_bad_controlnet_scales_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"^controlnet_scale must be a number in \[0, 2\]"):
        StreamParams(controlnet_scale=bad)


def test_bad_canny_thresholds_are_refused_by_name():
    with pytest.raises(ValueError, match="^canny_low must be <= canny_high"):
        StreamParams(canny_low=150, canny_high=100)
    with pytest.raises(ValueError, match="^canny_high must be a number"):
        StreamParams(canny_high=-1)
    assert StreamParams(canny_low=0, canny_high=0).canny_high == 0.0


def test_a_scale_without_a_controlnet_or_without_a_frame_is_a_clear_error():
    plain = make_pipe()
    with pytest.raises(ValueError, match="^controlnet_scale=0.5 needs a ControlNet"):
        plain.prepare(controlnet_scale=0.5)
    plain.prepare(controlnet_scale=0)  # 0 is off: fine anywhere
    batcher = StreamBatcher(plain)
    with pytest.raises(ValueError, match="^controlnet_scale=1 needs a ControlNet"):
        batcher.add_stream("a", controlnet_scale=1.0)
    batcher.add_stream("a")
    with pytest.raises(ValueError, match="^controlnet_scale=1 needs a ControlNet"):
        batcher.update_stream("a", controlnet_scale=1.0)
    # txt2img with an explicit scale: that frame fails, naming the setting
    pipe = controlnet_pipe()
    pipe.prepare("a cat", controlnet_scale=0.5, num_inference_steps=1, strength=1.0)
    with pytest.raises(ValueError, match="^controlnet_scale=0.5 needs an input frame"):
        pipe(None)
    good, bad = pipe.new_state(StreamParams()), pipe.new_state(StreamParams(controlnet_scale=1))
    out = pipe.run([(good, None), (bad, None)], return_exceptions=True)
    assert isinstance(out[0], PIL.Image.Image) and isinstance(out[1], ValueError)


def test_settings_reach_the_stream_over_the_service_path():
    assert {"controlnet_scale", "canny_low", "canny_high"} <= set(SETTABLE)
    assert StreamSettings.changes({"controlnet_scale": 1, "canny_low": 50}) == {
        "controlnet_scale": 1.0, "canny_low": 50.0}
    service = MediaService(controlnet_pipe())
    plain = MediaService(make_pipe())
    try:
        assert service.health()["controlnet"] == "custom" and plain.health()["controlnet"] is None
        stream_id = service.open_stream(prompt="a cat")
        assert service.stream_settings(stream_id)["controlnet_scale"] is None
        assert service.update_stream(stream_id, controlnet_scale=0.5)["controlnet_scale"] == 0.5
        assert service.batcher.params(stream_id).controlnet_scale == 0.5
        with pytest.raises(ValueError, match="^controlnet_scale must be") as caught:
            service.update_stream(stream_id, controlnet_scale=-1)
        assert param_error_name(str(caught.value)) == "controlnet_scale"  # -> 400 with this param
        other = plain.open_stream()
        with pytest.raises(ValueError, match="^controlnet_scale=0.5 needs a ControlNet") as caught:
            plain.update_stream(other, controlnet_scale=0.5)
        assert param_error_name(str(caught.value)) == "controlnet_scale"
    finally:
        asyncio.run(service.stop())
        asyncio.run(plain.stop())


def test_the_flag_and_loading():
    from livecast.services.serve import parse_settings

    settings, _ = parse_settings(["--diffusion-controlnet", "controlnet-shape"])
    assert settings.diffusion.controlnet == "controlnet-shape" and MediaConfig().controlnet is None
    assert conditioning_channels(8) == (16, 32, 96, 256) and conditioning_channels(2) == (16, 32)
    with pytest.raises(ControlNetError, match="3x VAE"):
        conditioning_channels(3)


def test_a_controlnet_folder_loads_and_a_mismatched_one_is_refused(tmp_path):
    source = controlnet_pipe(fuse_qkv=False)
    source.controlnet.model.save_pretrained(tmp_path / "cn")
    loaded = StreamPipeline(**tiny_components(0), resolution=SIZE, dtype=torch.float32, device="cpu",
                            controlnet=str(tmp_path / "cn"))
    assert loaded.model_info["controlnet"] == str(tmp_path / "cn")
    for name, param in source.controlnet.model.state_dict().items():
        assert torch.equal(param, loaded.controlnet.model.state_dict()[name]), name
    wide = tiny_components(0)
    other = build_controlnet(wide["unet"], downscale=8)  # an SD-style 8x conditioning embedding
    other.save_pretrained(tmp_path / "cn8")
    with pytest.raises(ControlNetError, match="downsamples its conditioning image 8x, the VAE 2x"):
        StreamPipeline(**tiny_components(0), resolution=SIZE, dtype=torch.float32, device="cpu",
                       controlnet=str(tmp_path / "cn8"))
    with pytest.raises(ControlNetError, match="cannot load it"):
        StreamPipeline(**tiny_components(0), resolution=SIZE, dtype=torch.float32, device="cpu",
                       controlnet=str(tmp_path / "missing"))


def test_bench_times_the_controlnet_on_and_off():
    from livecast.services.bench.diffusion import controlnet_cost, video_frames

    pipe = controlnet_pipe()
    calls = UNetCalls(pipe.controlnet.model)
    fps = controlnet_cost(pipe, video_frames(5, SIZE), rounds=1, device=pipe.device)
    assert set(fps) == {"off", "on"} and all(best >= median > 0 for best, median in fps.values())
    assert calls.take() == [1] * 5  # the "on" stream only: 2 warm-up frames, 3 timed


def _png(side: int = 64) -> bytes:
    buffer = io.BytesIO()
    square(side, side // 4, 3 * side // 4).save(buffer, format="PNG")
    return buffer.getvalue()


def _edit(http, **data):
    return http.post("/v1/images/edits", files={"image": ("in.png", _png(), "image/png")},
                     data={"prompt": "a cat", "seed": "1", "num_inference_steps": "2", **data})


def _pixels_of(response) -> np.ndarray:
    item = response.json()["data"][0]
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"), np.float32)


def test_a_server_started_with_controlnet_shape():
    """--diffusion-controlnet controlnet-shape on the demo (an 8x VAE, SD's 4-level UNet layout):
    /health names it, edits use it by default and turn it off at 0, bad values are 400s."""
    from tests.media.app import build_app
    from tests.media.conftest import running

    with running(build_app(diffusion=dict(resolution=64, controlnet="controlnet-shape"))) as server, \
            server.http() as http:
        assert http.get("/health").json()["diffusion"]["controlnet"] == "controlnet-shape"
        on, off = _edit(http), _edit(http, controlnet_scale="0")
        assert on.status_code == off.status_code == 200, (on.text, off.text)
        assert np.abs(_pixels_of(on) - _pixels_of(off)).mean() > 1
        for bad in ("-1", "nan", "3"):
            error = _edit(http, controlnet_scale=bad)
            assert error.status_code == 400 and error.json()["error"]["param"] == "controlnet_scale", error.text
        txt2img = http.post("/v1/images/generations", json={"prompt": "a cat", "num_inference_steps": 1})
        assert txt2img.status_code == 200, txt2img.text  # the default leaves txt2img alone
        assert server.diffusion.num_streams == 0


def test_a_controlnet_module_of_another_unet_is_refused():
    parts = tiny_components(0)
    other = tiny_components(0)["unet"]
    wider = type(other).from_config({**other.config, "cross_attention_dim": 16})
    with pytest.raises(ControlNetError, match="its cross_attention_dim is 16, the UNet's 32"):
        StreamPipeline(**parts, resolution=SIZE, dtype=torch.float32, device="cpu",
                       controlnet=build_controlnet(wider, downscale=2))
