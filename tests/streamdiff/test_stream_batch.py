"""Stream Batch equals sequential denoising; Residual CFG runs the stated number of UNet rows."""
from __future__ import annotations

import numpy as np
import pytest

from tests.streamdiff.conftest import UNetCalls, frame, make_pipe, pixels

STEPS = dict(num_inference_steps=4, strength=0.75)  # 3 denoising steps: t = 749, 499, 249
NUM_STEPS = 3


@pytest.mark.parametrize("cfg_type", ["none", "full", "self", "initialize"])
def test_stream_batch_gives_frame_i_its_sequential_result(cfg_type):
    frames = [frame(10 + i) for i in range(6)]
    params = dict(prompt="a cat", seed=4, guidance_scale=2.0, cfg_type=cfg_type, **STEPS)
    batched, sequential = make_pipe(), make_pipe()
    batched.prepare(use_denoising_batch=True, **params)
    sequential.prepare(use_denoising_batch=False, **params)
    calls = UNetCalls(batched.unet)
    out = [batched(f) for f in frames]
    expected = [sequential(f) for f in frames]
    # Stream Batch has N-1 frames of latency: call j returns frame j-(N-1); the buffer starts
    # primed with frame 0, so the first calls return frame 0.
    for j, image in enumerate(out):
        source = max(0, j - (NUM_STEPS - 1))
        diff = abs(pixels(image) - pixels(expected[source]))
        assert diff.max() <= 1, (j, source, diff.max())
    # After the priming walk (N calls of one frame), every frame costs exactly one UNet call.
    rows = calls.take()
    per_row = {"none": 1, "self": 1, "full": 2, "initialize": 1}[cfg_type]
    extra = 1 if cfg_type == "initialize" else 0
    assert len(rows) == NUM_STEPS + len(frames) - 1
    assert rows[NUM_STEPS:] == [NUM_STEPS * per_row + extra] * (len(frames) - 1)


def test_consecutive_outputs_differ_when_frames_differ():
    pipe = make_pipe()
    pipe.prepare(seed=1, **STEPS)
    out = [pixels(pipe(frame(30 + i))) for i in range(5)]
    assert all((out[i] != out[i + 1]).any() for i in range(NUM_STEPS - 1, 4))


@pytest.mark.parametrize("cfg_type,rows", [("none", 2), ("full", 4), ("self", 2), ("initialize", 3)])
def test_rcfg_unet_rows_per_frame(cfg_type, rows):
    pipe = make_pipe()
    pipe.prepare("a cat", negative_prompt="a dog", t_index_list=[1, 3], num_inference_steps=4,
                 guidance_scale=1.5, cfg_type=cfg_type)
    calls = UNetCalls(pipe.unet)
    pipe(frame(1))  # primes the 2-slot buffer: two sequential rounds
    calls.take()
    for i in range(3):
        pipe(frame(2 + i))
    assert calls.take() == [rows] * 3


@pytest.mark.parametrize("cfg_type", ["none", "full", "self", "initialize"])
def test_guidance_at_most_one_disables_cfg(cfg_type):
    pipe = make_pipe()
    pipe.prepare("a cat", guidance_scale=1.0, cfg_type=cfg_type, num_inference_steps=2)
    calls = UNetCalls(pipe.unet)
    pipe(frame(1))
    assert calls.take() == [1]


def test_rcfg_modes_change_the_output_and_self_depends_on_delta():
    # With one step, "initialize" computes the real unconditional noise for its only slot, so it
    # must equal "full"; every other pair of modes must differ.
    image = frame(5)
    results = {}
    for cfg_type, delta in [("none", 1.0), ("full", 1.0), ("self", 1.0), ("self", 0.5), ("initialize", 1.0)]:
        pipe = make_pipe()
        pipe.prepare("a cat", guidance_scale=3.0, cfg_type=cfg_type, delta=delta, seed=2,
                     num_inference_steps=2)
        results[cfg_type, delta] = pixels(pipe(image))
    assert np.array_equal(results["initialize", 1.0], results["full", 1.0])
    del results["initialize", 1.0]
    keys = list(results)
    for a in range(len(keys)):
        for b in range(a + 1, len(keys)):
            assert (results[keys[a]] != results[keys[b]]).any(), (keys[a], keys[b])


def test_sequential_mode_runs_one_row_per_step():
    pipe = make_pipe()
    pipe.prepare(use_denoising_batch=False, **STEPS)
    calls = UNetCalls(pipe.unet)
    for i in range(3):
        pipe(frame(i))
    assert calls.take() == [1] * NUM_STEPS * 3


def test_update_prompt_keeps_buffer_and_reuses_cached_embeddings():
    pipe = make_pipe()
    pipe.prepare("a cat", **STEPS)
    encodes = UNetCalls(pipe.text_encoder)
    first = pipe(frame(1))
    plan = pipe._state.plans[False]
    buffer = plan.buffer_x
    assert buffer is not None and encodes.take() == []  # "a cat" was encoded by prepare()
    pipe.update_prompt("a dog")
    assert encodes.take() == [1]
    unet = UNetCalls(pipe.unet)
    changed = pipe(frame(1))
    assert unet.take() == [NUM_STEPS]  # still one batched call: no re-warmup
    assert pipe._state.plans[False] is plan
    assert (pixels(changed) != pixels(first)).any()
    pipe.update_prompt("a cat")
    assert encodes.take() == []  # cached
    assert len(pipe.prompts) == 2


def test_update_prompt_equals_fresh_prepare_for_one_step():
    updated, fresh = make_pipe(), make_pipe()
    updated.prepare("a cat", seed=9)
    updated(frame(1))
    updated.update_prompt("a red bird")
    fresh.prepare("a red bird", seed=9)
    assert np.array_equal(pixels(updated(frame(2))), pixels(fresh(frame(2))))


def test_same_seed_same_output_and_seed_matters():
    a, b = make_pipe(), make_pipe()
    a.prepare("x", seed=1)
    b.prepare("x", seed=1)
    image = frame(3)
    assert np.array_equal(pixels(a(image)), pixels(b(image)))
    b.prepare("x", seed=2)
    assert (pixels(a(image)) != pixels(b(image))).any()


def test_txt2img_and_img2img_switch_restarts_buffer():
    pipe = make_pipe()
    pipe.prepare(**STEPS)
    calls = UNetCalls(pipe.unet)
    pipe(frame(1))
    pipe(None)  # txt2img uses all 4 steps: a priming walk of 4 rounds
    pipe(None)
    pipe(frame(2))  # back to img2img: primed again
    assert calls.take() == [1, 1, 1] + [1, 1, 1, 1] + [4] + [1, 1, 1]
