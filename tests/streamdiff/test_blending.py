"""Prompt and seed blending (issue 27): parity with hand-computed embeddings and noise, single
entries equal plain values, and weight changes mid-stream with no re-encode and no re-warm."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from livecast.streamdiff import StreamBatcher, StreamParams
from livecast.streamdiff.config import MAX_BLEND, PromptWeight, SeedWeight
from livecast.streamdiff.schedule import seed_noise
from tests.streamdiff.conftest import SIZE, UNetCalls, frame, make_pipe, pixels

STEPS = dict(num_inference_steps=4, strength=0.75)  # three denoising steps: a 3-slot buffer
LATENT = (1, 4, SIZE // 2, SIZE // 2)


def text_encoder_output(pipe, prompt: str) -> torch.Tensor:
    """The conditioning diffusers would compute, straight from the components."""
    tokens = pipe.tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt",
                            max_length=pipe.tokenizer.model_max_length)
    with torch.no_grad():
        return pipe.text_encoder(tokens.input_ids)[0]


def test_prompt_blend_is_the_weight_normalised_sum_of_text_encoder_outputs():
    pipe = make_pipe()
    pipe.prepare(prompt=[{"text": "a cat", "weight": 1.0}, {"text": "neon city", "weight": 3.0}])
    expected = (1.0 * text_encoder_output(pipe, "a cat") + 3.0 * text_encoder_output(pipe, "neon city")) / 4.0
    torch.testing.assert_close(pipe._state.guidance.cond, expected)
    # interpolation, not a pick: it lies strictly between the two
    assert not torch.allclose(expected, text_encoder_output(pipe, "neon city"))


def test_seed_blend_is_the_renormalised_weighted_sum_of_each_seeds_noise():
    pipe = make_pipe()
    pipe.prepare(seed=[{"seed": 1, "weight": 1.0}, {"seed": 2, "weight": 3.0}], **STEPS)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    for slot in range(3):  # every slot's noise: each seed's k-th draw
        n1, n2 = torch.randn(LATENT, generator=g1), torch.randn(LATENT, generator=g2)
        expected = (1.0 * n1 + 3.0 * n2) / (1.0**2 + 3.0**2) ** 0.5
        torch.testing.assert_close(pipe._state.plans[False].noise[slot:slot + 1], expected)


def test_seed_blend_keeps_unit_variance_and_merges_a_repeated_seed():
    shape = (4, 64, 64)
    blended = seed_noise([SeedWeight(1, 0.5), SeedWeight(2, 0.5)], 1, shape, torch.device("cpu"))
    assert abs(blended.std().item() - 1.0) < 0.02
    same = seed_noise([SeedWeight(7, 0.5), SeedWeight(7, 2.0)], 1, shape, torch.device("cpu"))
    assert torch.equal(same, seed_noise(7, 1, shape, torch.device("cpu")))


def test_single_entry_lists_equal_the_plain_string_and_int():
    plain, listed = make_pipe(), make_pipe()
    plain.prepare("a cat", seed=5, **STEPS)
    listed.prepare(prompt=[{"text": "a cat", "weight": 0.3}], seed=[{"seed": 5, "weight": 0.7}], **STEPS)
    assert torch.equal(plain._state.guidance.cond, listed._state.guidance.cond)
    for i in range(3):
        assert np.array_equal(pixels(plain(frame(i))), pixels(listed(frame(i))))
    # a zero weight leaves the other entry alone, bit for bit
    listed.update(prompt=[("a cat", 1.0), ("a dog", 0.0)], seed=[(5, 2.0), (6, 0.0)])
    assert torch.equal(plain._state.guidance.cond, listed._state.guidance.cond)
    assert np.array_equal(pixels(plain(frame(3))), pixels(listed(frame(3))))


class Calls:
    def __init__(self, module: torch.nn.Module):
        self.count = 0
        module.register_forward_pre_hook(lambda *_: setattr(self, "count", self.count + 1))

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def test_a_mid_stream_weight_change_applies_on_the_next_frame_without_re_encoding_or_re_warming():
    pipe = make_pipe()
    encodes = Calls(pipe.text_encoder)
    pipe.prepare(prompt=[("a cat", 1.0), ("a dog", 0.0)], seed=[(1, 1.0), (2, 0.0)], **STEPS)
    assert encodes.take() == 2  # each prompt once, the zero-weight one too
    unet = UNetCalls(pipe.unet)
    first = pipe(frame(1))
    assert unet.take() == [1, 1, 1]  # the priming walk
    plan = pipe._state.plans[False]
    cat_only = pipe(frame(1))
    assert unet.take() == [3]

    pipe.update(prompt=[("a cat", 0.5), ("a dog", 0.5)])
    assert encodes.take() == 0  # both cached: only the weighted sum is recomputed
    assert pipe._state.plans[False] is plan  # same noise, same buffer
    blended = pipe(frame(1))
    assert unet.take() == [3]  # still one batched call: no re-warm
    assert (pixels(blended) != pixels(cat_only)).any()
    expected = 0.5 * text_encoder_output(pipe, "a cat") + 0.5 * text_encoder_output(pipe, "a dog")
    torch.testing.assert_close(pipe._state.guidance.cond, expected)
    encodes.take()  # the hand-computed reference above

    buffer = pipe._state.plans[False].buffer_x
    pipe.update(seed=[(1, 0.5), (2, 0.5)])
    assert encodes.take() == 0
    new_plan = pipe._state.plans[False]
    assert new_plan is not plan and new_plan.buffer_x is buffer  # new noise, the buffer carries on
    assert new_plan.timesteps is plan.timesteps
    reseeded = pipe(frame(1))
    assert unet.take() == [3]
    assert (pixels(reseeded) != pixels(blended)).any() and (pixels(first) != pixels(reseeded)).any()


def test_a_seed_change_equals_a_fresh_prepare_for_one_step():
    updated, fresh = make_pipe(), make_pipe()
    updated.prepare("a cat", seed=9)
    updated(frame(1))
    updated.update(seed=[(3, 1.0), (4, 2.0)], prompt=[("a cat", 1.0), ("a red bird", 1.0)])
    fresh.prepare(prompt=[("a cat", 1.0), ("a red bird", 1.0)], seed=[(3, 1.0), (4, 2.0)])
    assert np.array_equal(pixels(updated(frame(2))), pixels(fresh(frame(2))))


def test_blends_work_past_the_prompt_cache_bound():
    pipe = make_pipe(max_cached_prompts=2)
    prompt = [(f"prompt {i}", 1.0) for i in range(3)]
    pipe.prepare(prompt=prompt)
    assert len(pipe.prompts) == 2  # bounded LRU; the blend still has all three
    expected = sum(text_encoder_output(pipe, f"prompt {i}") for i in range(3)) / 3
    torch.testing.assert_close(pipe._state.guidance.cond, expected)


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompt=[]), "^prompt must list at least one"),
    (dict(prompt=[("a", 0.0), ("b", 0.0)]), "^prompt weights must have a finite sum greater than 0"),
    (dict(prompt=[("a", -1.0), ("b", 2.0)]), "^prompt entry 0 weight must be a finite number >= 0"),
    (dict(prompt=[("a", float("nan"))]), "^prompt entry 0 weight"),
    (dict(prompt=[("a", float("inf"))]), "^prompt entry 0 weight"),
    (dict(prompt=[("a", 1.0)] * (MAX_BLEND + 1)), f"^prompt may blend at most {MAX_BLEND}"),
    (dict(prompt=[{"text": "a"}]), "^prompt entry 0 must have exactly the keys"),
    (dict(prompt=[(1, 1.0)]), "^prompt entry 0 text must be a str"),
    (dict(prompt=5), "^prompt must be a str or a list"),
    (dict(seed=[]), "^seed must list at least one"),
    (dict(seed=[(1, 0.0)]), "^seed weights must have a finite sum"),
    (dict(seed=[(-1, 1.0)]), r"^seed entry 0 seed must be an int in \[0, 2\*\*63\)"),
    (dict(seed=[(1, True)]), "^seed entry 0 weight"),
    (dict(seed=1.5), "^seed must be an int or a list"),
    (dict(temporal_blend=0.95), r"^temporal_blend must be a number in \[0, 0.9\]"),
    (dict(temporal_blend=-0.1), "^temporal_blend"),
])
def test_bad_blends_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamParams(**kwargs)


def test_blends_are_stored_as_tuples_and_compare_by_value():
    params = StreamParams(prompt=[{"text": "a", "weight": 1}], seed=[[3, 2]])
    assert params.prompt == (PromptWeight("a", 1.0),) and params.seed == (SeedWeight(3, 2.0),)
    assert params == StreamParams(prompt=[("a", 1.0)], seed=[{"seed": 3, "weight": 2.0}])
    assert hash(params) == hash(params.updated())


def test_the_batcher_applies_a_blend_update_on_the_next_step():
    batcher = StreamBatcher(make_pipe())
    batcher.add_stream("a", prompt="a cat", seed=1)
    batcher.submit("a", frame(1))
    batcher.step()
    state = batcher._streams["a"].state
    batcher.update_stream("a", prompt=[{"text": "a cat", "weight": 1}, {"text": "a dog", "weight": 1}],
                          seed=[{"seed": 1, "weight": 1}, {"seed": 2, "weight": 1}], temporal_blend=0.5)
    batcher.submit("a", frame(1))
    batcher.step()
    new = batcher._streams["a"].state
    assert new is not state and len(new.params.prompt) == 2 and new.temporal.strength == 0.5
