"""Similarity filter: identical frames are skipped (up to a limit), changed frames never are."""
from __future__ import annotations

import numpy as np
import torch

from livecast.streamdiff.similarity import SimilarityFilter
from tests.streamdiff.conftest import UNetCalls, frame, make_pipe, pixels


def test_identical_frames_are_skipped_and_return_the_previous_result():
    pipe = make_pipe()
    pipe.prepare("a cat", similarity_filter=True, similarity_threshold=0.98, max_skip_frames=10)
    calls = UNetCalls(pipe.unet)
    image = frame(1)
    first = pipe(image)
    again = [pipe(image) for _ in range(3)]
    assert calls.take() == [1]
    assert all(np.array_equal(pixels(a), pixels(first)) for a in again)


def test_a_changed_frame_is_never_skipped():
    pipe = make_pipe()
    pipe.prepare("a cat", similarity_filter=True, similarity_threshold=0.98)
    calls = UNetCalls(pipe.unet)
    outputs = [pipe(frame(i)) for i in range(6)]  # every frame differs
    assert calls.take() == [1] * 6
    assert all((pixels(outputs[i]) != pixels(outputs[i + 1])).any() for i in range(5))


def test_max_skip_frames_forces_a_refresh():
    pipe = make_pipe()
    pipe.prepare(similarity_filter=True, max_skip_frames=2)
    calls = UNetCalls(pipe.unet)
    for _ in range(7):
        pipe(frame(1))
    assert len(calls.take()) == 3  # run, skip, skip, run, skip, skip, run


def test_filter_off_runs_every_frame():
    pipe = make_pipe()
    pipe.prepare(similarity_filter=False)
    calls = UNetCalls(pipe.unet)
    for _ in range(3):
        pipe(frame(1))
    assert len(calls.take()) == 3


def test_prompt_change_is_not_skipped():
    pipe = make_pipe()
    pipe.prepare("a cat", similarity_filter=True)
    calls = UNetCalls(pipe.unet)
    before = pipe(frame(1))
    pipe.update_prompt("a dog")
    after = pipe(frame(1))
    assert len(calls.take()) == 2 and (pixels(before) != pixels(after)).any()


def test_threshold_semantics():
    flt = SimilarityFilter(threshold=0.9, max_skip_frames=5)
    base = torch.rand(3, 8, 8) * 2 - 1
    assert not flt.should_skip(base)
    assert flt.should_skip(base.clone())
    assert not flt.should_skip(-base)  # cosine similarity -1
    assert not flt.should_skip(-base, key=(1, 1))  # a different frame size never reuses output
