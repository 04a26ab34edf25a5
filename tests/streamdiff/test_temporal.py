"""temporal_blend (issue 27, item 4): the EMA over a stream's denoised latents, its resets, and
the flicker it removes on a noisy still input (`livecast bench video --flicker`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from livecast.services.bench import video
from livecast.streamdiff.stream import TemporalBlend
from tests.streamdiff.conftest import SIZE, frame, make_pipe, pixels


def record_decoded(pipe) -> list[torch.Tensor]:
    """The latents each call hands to the VAE decoder."""
    seen: list[torch.Tensor] = []
    decode = pipe.codec.decode

    def spy(latents):
        seen.append(latents.clone())
        return decode(latents)

    pipe.codec.decode = spy
    return seen


def test_the_blend_is_an_ema_of_the_denoised_latents():
    plain, smooth = make_pipe(), make_pipe()
    plain.prepare("a cat", seed=3, num_inference_steps=4, strength=0.75)
    smooth.prepare("a cat", seed=3, num_inference_steps=4, strength=0.75, temporal_blend=0.6)
    x0s, outs = record_decoded(plain), record_decoded(smooth)
    for i in range(5):
        plain(frame(i))
        smooth(frame(i))
    # the blend reads the denoised latents and never feeds back into the Stream Batch buffer
    expected = x0s[0]
    torch.testing.assert_close(outs[0], expected)
    for x0, out in zip(x0s[1:], outs[1:]):
        expected = 0.4 * x0 + 0.6 * expected
        torch.testing.assert_close(out, expected)


def test_temporal_blend_state_math():
    blend = TemporalBlend(0.75)
    a, b, c = torch.full((1, 4, 2, 2), 4.0), torch.zeros(1, 4, 2, 2), torch.full((1, 4, 2, 2), 8.0)
    assert torch.equal(blend(a, txt2img=False), a)  # starts from the first latent, not from zero
    assert torch.allclose(blend(b, txt2img=False), torch.full_like(a, 3.0))  # 0.25*0 + 0.75*4
    assert torch.allclose(blend(c, txt2img=False), torch.full_like(a, 4.25))  # 0.25*8 + 0.75*3
    assert torch.equal(blend(b, txt2img=True), b)  # a mode switch starts over
    assert torch.equal(blend(torch.ones(1, 4, 4, 4), txt2img=True), torch.ones(1, 4, 4, 4))  # new shape too
    blend.reset()
    assert blend.latent is None


def test_off_by_default_and_zero_is_off():
    plain, zero = make_pipe(), make_pipe()
    plain.prepare("a cat")
    zero.prepare("a cat", temporal_blend=0)
    assert plain._state.temporal is None and zero._state.temporal is None
    for i in range(3):
        assert np.array_equal(pixels(plain(frame(i))), pixels(zero(frame(i))))


def test_the_blend_state_lives_in_the_stream_state_and_resets_on_a_new_size():
    pipe = make_pipe()
    pipe.prepare("a cat", temporal_blend=0.5)
    pipe(frame(1))
    latent = pipe._state.temporal.latent
    assert latent is not None
    pipe.update(prompt="a dog", temporal_blend=0.8)  # other changes carry the average on
    assert pipe._state.temporal.latent is latent and pipe._state.temporal.strength == 0.8
    pipe.update(strength=1.0)  # a new schedule too
    assert pipe._state.temporal.latent is latent
    pipe.update(width=SIZE * 2)
    assert pipe._state.temporal.latent is None  # a new working size starts over
    pipe(frame(1))
    assert pipe._state.temporal.latent.shape[-1] == 2 * latent.shape[-1]
    pipe.update(temporal_blend=0)
    assert pipe._state.temporal is None
    pipe.update(temporal_blend=0.5)
    assert pipe._state.temporal.latent is None  # turned off, the average is gone


def test_flicker_on_a_noisy_still_input_falls_with_the_blend():
    pipe = make_pipe()
    frames = video.still_frames(14, SIZE, noise=12.0)
    settings = {"strength": 0.5, "num_inference_steps": 2}
    off, on = video.measure(pipe, frames, [0.0, 0.8], warmup=4, settings=settings)
    assert off["input_flicker"] == on["input_flicker"] > 0
    assert off["output_flicker"] > 0
    assert on["output_flicker"] < 0.7 * off["output_flicker"]


def test_the_flicker_metric():
    still = [np.zeros((4, 4, 3), np.uint8)] * 3
    assert video.flicker(still) == 0.0
    steps = [np.full((4, 4, 3), v, np.uint8) for v in (0, 10, 30)]
    assert video.flicker(steps) == 15.0
    with pytest.raises(ValueError):
        video.flicker(steps[:1])


def test_bench_video_flicker_writes_json(tmp_path, capsys):
    path = tmp_path / "video.json"
    code = video.main(["--flicker", "--frames", "3", "--warmup", "1", "--blends", "0", "0.5",
                       "--json", str(path)], make_pipe=make_pipe)
    assert code == 0
    result = json.loads(path.read_text())
    assert result["bench"] == "video" and set(result["flicker"]) == {"still", "pan"}
    for runs in result["flicker"].values():
        assert [r["temporal_blend"] for r in runs] == [0.0, 0.5]
        assert all(r["fps"] > 0 and r["input_flicker"] > 0 for r in runs)
    assert "output/input" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        video.main([])  # nothing to measure
