"""Style LoRAs per stream (livecast.streamdiff.lora) against diffusers' `load_lora_weights`.

No adapters exist offline, so each test builds tiny ones with PEFT (a LoraConfig on the UNet's
attention projections, B drawn non-zero so the adapter changes the picture) and saves them the
way diffusers does (`StableDiffusionPipeline.save_lora_weights`). Parity tolerance is the one of
test_diffusers_parity: 8-bit outputs within 1 level, mean below 0.1.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from livecast.streamdiff import StreamBatcher
from livecast.streamdiff.config import StreamParams
from livecast.streamdiff.lora_format import WEIGHT_NAME, LoraError
from tests.streamdiff.conftest import UNetCalls, frame, make_pipe, pixels, tiny_components

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
STEP = dict(num_inference_steps=2, strength=0.5)  # SD-Turbo's one-step img2img (t=499)


@pytest.fixture(autouse=True)
def posterior_mean(monkeypatch):
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())


def make_adapter(folder, seed: int, *, rank: int = 4, alpha: float = 8, targets=ATTENTION,
                 layout: str = "peft", metadata: bool = True, std: float = 0.3, text_encoder: bool = False):
    """A PEFT LoRA on the tiny UNet (and its text encoder's attention with `text_encoder`),
    saved in diffusers' format; returns the folder.

    layout: `peft` (unet.<module>.lora_A/lora_B) or `diffusers` (the older lora.down/lora.up).
    """
    parts = tiny_components(0)
    models = {"unet": (parts["unet"], LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)))}
    if text_encoder:
        models["text_encoder"] = (parts["text_encoder"], LoraConfig(
            r=rank, lora_alpha=alpha, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    generator = torch.Generator().manual_seed(seed)
    saved = {}
    for component, (model, config) in models.items():
        torch.manual_seed(seed)
        # PEFT's own injection: transformers' add_adapter wants a PEFT release newer than PyPI's
        inject_adapter_in_model(config, model)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:  # PEFT starts B at zero: the adapter would do nothing
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
        state = {key.replace(".default.", "."): value.detach().clone()
                 for key, value in model.state_dict().items() if ".lora_" in key}
        if layout == "diffusers":
            state = convert_state_dict_to_diffusers(state)
        saved[f"{component}_lora_layers"] = state
        saved[f"{component}_lora_adapter_metadata"] = config.to_dict() if metadata else None
    StableDiffusionImg2ImgPipeline.save_lora_weights(str(folder), **saved)
    return folder


def reference(seed: int = 0):
    """diffusers' img2img pipeline on a fresh copy of the same components (unfused QKV)."""
    parts = tiny_components(seed)
    ref = StableDiffusionImg2ImgPipeline(**parts, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


def assert_close(expected, actual, max_levels=1, max_mean=0.1):
    diff = abs(pixels(expected) - pixels(actual))
    assert diff.max() <= max_levels and diff.mean() <= max_mean, (diff.max(), diff.mean())


def differs(a, b) -> float:
    return float(abs(pixels(a) - pixels(b)).mean())


@pytest.fixture
def adapters(tmp_path):
    return {name: make_adapter(tmp_path / name, seed) for name, seed in (("x", 1), ("y", 2))}


# -- parity with diffusers ---------------------------------------------------------------------

@pytest.mark.parametrize("layout,metadata", [("peft", True), ("peft", False), ("diffusers", False)],
                         ids=["peft+alpha", "peft-no-metadata", "lora.down/up"])
@pytest.mark.parametrize("fuse_qkv", [True, False], ids=["fused-qkv", "separate-qkv"])
def test_unet_lora_matches_diffusers_load_lora_weights(tmp_path, layout, metadata, fuse_qkv):
    path = make_adapter(tmp_path / "style", 3, layout=layout, metadata=metadata)
    image = frame(1)
    ref = reference()
    plain = ref("a cat", image=image, guidance_scale=0.0, generator=torch.Generator().manual_seed(7),
                **STEP).images[0]
    ref.load_lora_weights(str(path), adapter_name="style")
    expected = ref("a cat", image=image, guidance_scale=0.0, generator=torch.Generator().manual_seed(7),
                   **STEP).images[0]
    pipe = make_pipe(fuse_qkv=fuse_qkv)
    pipe.load_lora(("style"), str(path))
    pipe.prepare("a cat", seed=7, lora="style", **STEP)
    ours = pipe(image)
    assert differs(plain, expected) > 2  # the adapter really changes the picture
    assert_close(expected, ours)
    # lora_scale is diffusers' cross_attention_kwargs scale
    half = ref("a cat", image=image, guidance_scale=0.0, generator=torch.Generator().manual_seed(7),
               cross_attention_kwargs={"scale": 0.5}, **STEP).images[0]
    pipe.update(lora_scale=0.5)
    assert_close(half, pipe(image))


def test_unet_lora_matches_diffusers_fused_lora(tmp_path):
    path = make_adapter(tmp_path / "style", 4, rank=8, alpha=4)
    image = frame(2)
    ref = reference()
    ref.load_lora_weights(str(path), adapter_name="style")
    ref.fuse_lora(lora_scale=0.75)
    expected = ref("neon city", image=image, guidance_scale=0.0,
                   generator=torch.Generator().manual_seed(5), **STEP).images[0]
    pipe = make_pipe()
    pipe.load_lora("style", str(path))
    pipe.prepare("neon city", seed=5, lora="style", lora_scale=0.75, **STEP)
    assert_close(expected, pipe(image))


def test_text_encoder_layers_match_diffusers(tmp_path):
    # transformers' load_adapter (which diffusers calls for text encoders) wants a PEFT newer than
    # PyPI has, so the reference loads the UNet layers with load_lora_weights and has the text
    # encoder's merged by hand: W += scale * alpha / r * B @ A (what fuse_lora does).
    path = make_adapter(tmp_path / "both", 12, text_encoder=True)
    state = load_file(str(path / WEIGHT_NAME))
    save_file({k: v for k, v in state.items() if k.startswith("unet.")}, str(tmp_path / "unet.safetensors"),
              metadata=safe_open(str(path / WEIGHT_NAME), "pt").metadata())  # lora_alpha 8
    image = frame(4)
    ref = reference()
    ref.load_lora_weights(str(tmp_path / "unet.safetensors"), adapter_name="both")
    with torch.no_grad():
        for key in [k for k in state if k.startswith("text_encoder.") and ".lora_A." in k]:
            module = ref.text_encoder.get_submodule(key.removeprefix("text_encoder.").split(".lora_A.")[0])
            down, up = state[key], state[key.replace(".lora_A.", ".lora_B.")]
            module.weight += 0.7 * (8 / 4) * up @ down
    expected = ref("a red fox", image=image, guidance_scale=0.0, generator=torch.Generator().manual_seed(3),
                   cross_attention_kwargs={"scale": 0.7}, **STEP).images[0]
    pipe = make_pipe()
    adapter = pipe.load_lora("both", str(path))
    assert len(adapter.text_layers) == 4 * 2 and pipe.loras.text_adapters == {"both"}
    pipe.prepare("a red fox", seed=3, lora="both", lora_scale=0.7, **STEP)
    assert_close(expected, pipe(image))
    # the plain prompt cache is untouched; the adapter's embeddings differ from it
    plain = pipe.prompts("a red fox")
    assert not torch.allclose(plain, pipe._state.guidance.cond)
    pipe.update(lora=None)
    assert pipe._state.guidance.cond is plain


def test_conv_and_feed_forward_layers_match_diffusers(tmp_path):
    # Conv2d layers (resnets, proj_in/proj_out are 1x1 convs here) and the GEGLU projection.
    targets = ["conv1", "conv2", "proj_in", "proj_out", "ff.net.0.proj", "to_q", "to_v"]
    path = make_adapter(tmp_path / "conv", 6, rank=2, alpha=2, targets=targets, std=0.05)
    image = frame(3)
    ref = reference()
    ref.load_lora_weights(str(path), adapter_name="conv")
    expected = ref("", image=image, guidance_scale=0.0, generator=torch.Generator().manual_seed(1),
                   **STEP).images[0]
    pipe = make_pipe()
    pipe.load_lora("conv", str(path))
    pipe.prepare("", seed=1, lora="conv", **STEP)
    assert_close(expected, pipe(image))


def test_kohya_layout_matches_peft_layout(tmp_path):
    path = make_adapter(tmp_path / "peft", 8)
    state = load_file(str(path / WEIGHT_NAME))
    kohya = {}
    for key, value in state.items():
        module, _, kind = key.removeprefix("unet.").rpartition(".lora_")
        stem = "lora_unet_" + module.replace(".", "_")
        kohya[f"{stem}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        kohya[f"{stem}.alpha"] = torch.tensor(8.0)  # the adapter's lora_alpha
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    pipe = make_pipe()
    pipe.load_lora("peft", str(path))
    pipe.load_lora("kohya", str(tmp_path / "kohya.safetensors"))
    a, b = pipe.new_state(StreamParams(seed=2, lora="peft", **STEP)), pipe.new_state(
        StreamParams(seed=2, lora="kohya", **STEP))
    out = pipe.run([(a, frame(4)), (b, frame(4))])
    assert_close(out[0], out[1], max_levels=0)


# -- many streams, one UNet call -------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["batched", "gather", "grouped"])
def test_mixed_batch_in_one_unet_call_equals_each_stream_alone(adapters, strategy):
    pipe = make_pipe(lora_strategy=strategy)
    for name, path in adapters.items():
        pipe.load_lora(name, str(path))
    settings = [dict(prompt="a cat", seed=1, lora="x"), dict(prompt="a dog", seed=2, lora="y", lora_scale=0.6),
                dict(prompt="a cat", seed=1)]
    frames = [frame(5), frame(6), frame(5)]
    calls = UNetCalls(pipe.unet)
    together = pipe.run([(pipe.new_state(StreamParams(**s, **STEP)), f) for s, f in zip(settings, frames)])
    assert calls.take() == [3]  # one UNet call, one row per stream
    alone = [pipe.run([(pipe.new_state(StreamParams(**s, **STEP)), f)])[0] for s, f in zip(settings, frames)]
    for a, b in zip(together, alone):
        assert_close(b, a, max_levels=1, max_mean=0.05)
    assert differs(together[0], together[2]) > 2  # same prompt, seed and frame: only the LoRA differs


def test_the_three_strategies_agree_on_conv_and_linear_layers(adapters, tmp_path):
    conv = make_adapter(tmp_path / "conv", 13, rank=3, targets=["conv1", "conv2", "proj_in", "to_k", "to_out.0"],
                        std=0.05)
    adapters = {**adapters, "c": conv}
    outs = []
    for strategy in ("batched", "gather", "grouped"):
        pipe = make_pipe(lora_strategy=strategy)
        for name, path in adapters.items():
            pipe.load_lora(name, str(path))
        states = [pipe.new_state(StreamParams(seed=i, lora=lora, guidance_scale=2.0, cfg_type="full", **STEP))
                  for i, lora in enumerate(["x", None, "y", "c", "x"])]
        outs.append(pipe.run([(s, frame(7)) for s in states]))
    for batched, gather, grouped in zip(*outs):
        assert_close(batched, gather, max_levels=1, max_mean=0.05)
        assert_close(batched, grouped, max_levels=1, max_mean=0.05)


def test_full_cfg_rows_get_the_streams_lora(tmp_path):
    # diffusers applies the LoRA to the unconditional branch too.
    path = make_adapter(tmp_path / "style", 9)
    image = frame(8)
    ref = reference()
    ref.load_lora_weights(str(path), adapter_name="style")
    expected = ref("a cat", negative_prompt="blurry", image=image, guidance_scale=3.0,
                   generator=torch.Generator().manual_seed(5), **STEP).images[0]
    pipe = make_pipe()
    pipe.load_lora("style", str(path))
    pipe.prepare("a cat", negative_prompt="blurry", seed=5, guidance_scale=3.0, cfg_type="full",
                 lora="style", **STEP)
    assert_close(expected, pipe(image))


def test_lora_switch_mid_stream_applies_on_the_next_frame(adapters):
    pipe = make_pipe()
    for name, path in adapters.items():
        pipe.load_lora(name, str(path))
    batcher = StreamBatcher(pipe)
    batcher.add_stream("s", prompt="a cat", seed=3, **STEP)

    def next_frame(image):
        future = batcher.submit("s", image)
        batcher.step()
        return future.result(timeout=5)

    def alone(image, **settings):
        return pipe.run([(pipe.new_state(StreamParams(prompt="a cat", seed=3, **STEP, **settings)), image)])[0]

    plain = next_frame(frame(1))
    assert_close(alone(frame(1)), plain, max_levels=0)
    assert batcher.update_stream("s", lora="x").lora == "x"
    assert_close(alone(frame(2), lora="x"), next_frame(frame(2)), max_levels=0)
    batcher.update_stream("s", lora="y", lora_scale=2.0)
    assert_close(alone(frame(3), lora="y", lora_scale=2.0), next_frame(frame(3)), max_levels=0)
    batcher.update_stream("s", lora=None)
    assert_close(alone(frame(4)), next_frame(frame(4)), max_levels=0)


def test_stream_batch_buffer_carries_over_a_lora_switch(adapters):
    pipe = make_pipe()
    pipe.load_lora("x", str(adapters["x"]))
    pipe.prepare("a cat", seed=2, t_index_list=(0, 1), num_inference_steps=2)
    pipe(frame(1))
    plan = pipe._state.plans[False]
    assert plan.buffer_x is not None
    pipe.update(lora="x")
    assert pipe._state.plans[False] is plan  # same buffer: no re-warm-up
    calls = UNetCalls(pipe.unet)
    pipe(frame(2))
    assert calls.take() == [2]


# -- registry, LRU, validation -----------------------------------------------------------------

def test_unknown_adapter_is_refused_naming_lora(adapters):
    pipe = make_pipe()
    pipe.load_lora("x", str(adapters["x"]))
    batcher = StreamBatcher(pipe)
    with pytest.raises(ValueError, match=r"^lora 'nope' is not a registered adapter \(registered: x\)"):
        batcher.add_stream("a", lora="nope")
    batcher.add_stream("a", lora="x")
    with pytest.raises(ValueError, match=r"^lora 'nope'"):
        batcher.update_stream("a", lora="nope")
    assert batcher.params("a").lora == "x"
    with pytest.raises(ValueError, match=r"^lora 'x'"):
        make_pipe().prepare(lora="x")


@pytest.mark.parametrize("value", [5.0, -4.5, float("nan"), "1", True])
def test_lora_scale_is_range_checked(value):
    with pytest.raises(ValueError, match="^lora_scale"):
        StreamParams(lora_scale=value)
    with pytest.raises(ValueError, match="^lora must"):
        StreamParams(lora="")


def _corrupt(tmp_path, source, edit) -> str:
    state = load_file(str(source / WEIGHT_NAME))
    edit(state)
    out = tmp_path / "bad.safetensors"
    save_file(state, str(out))
    return str(out)


def _key(state, part):
    return next(k for k in sorted(state) if part in k)


MALFORMED = {
    "wrong-rank": (lambda s: s.__setitem__(_key(s, "attn1.to_q.lora_B"), torch.zeros(32, 3)),
                   r"attn1\.to_q: lora_B \(up\) has shape \(32, 3\)"),
    "wrong-width": (lambda s: s.__setitem__(_key(s, "attn2.to_k.lora_A"), torch.zeros(4, 7)),
                    r"attn2\.to_k: lora_A \(down\) has shape \(4, 7\)"),
    "missing-tensor": (lambda s: s.pop(_key(s, "attn1.to_v.lora_A")),
                       r"attn1\.to_v: missing tensor lora_A"),
    "unknown-module": (lambda s: s.__setitem__("unet.down_blocks.9.attn1.to_q.lora_A.weight", torch.zeros(4, 32))
                       or s.__setitem__("unet.down_blocks.9.attn1.to_q.lora_B.weight", torch.zeros(32, 4)),
                       r"UNet down_blocks\.9\.attn1\.to_q: no such module"),
    "text-encoder": (lambda s: s.__setitem__("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
                                             torch.zeros(4, 32)),
                     r"text encoder text_model\.encoder\.layers\.0\.self_attn\.q_proj: missing tensor lora_B"),
    "second-text-encoder": (lambda s: s.__setitem__("text_encoder_2.text_model.x.lora_A.weight", torch.zeros(4, 32)),
                            r"tensor\(s\) for text_encoder_2: only the UNet's and the \(first\) text encoder's"),
    "dora": (lambda s: s.__setitem__("unet.mid_block.attentions.0.lora_magnitude_vector", torch.zeros(4)),
             r"DoRA adapters are not supported"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_adapter_fails_naming_it_and_changes_nothing(adapters, tmp_path, case):
    edit, message = MALFORMED[case]
    bad = _corrupt(tmp_path, adapters["y"], edit)
    pipe = make_pipe()
    pipe.load_lora("x", str(adapters["x"]))
    state = pipe.new_state(StreamParams(seed=4, lora="x", **STEP))
    before = pipe.run([(state, frame(9))])[0]
    with pytest.raises(LoraError, match=rf"^LoRA 'bad' \({bad}\): .*{message}"):
        pipe.load_lora("bad", bad)
    assert pipe.loras.names == ["x"] and list(pipe.loras.resident) == ["x"]
    with pytest.raises(ValueError, match="^lora 'bad'"):
        pipe.check(StreamParams(lora="bad"))
    # re-registering a known name with a bad file keeps the old adapter too
    with pytest.raises(LoraError):
        pipe.load_lora("x", bad)
    after = pipe.run([(pipe.new_state(StreamParams(seed=4, lora="x", **STEP)), frame(9))])[0]
    assert_close(before, after, max_levels=0)


def test_missing_file_and_bad_name(tmp_path):
    pipe = make_pipe()
    with pytest.raises(LoraError, match=r"^LoRA 'a' \(.*\): .*no such LoRA file"):
        pipe.load_lora("a", str(tmp_path / "none.safetensors"))
    with pytest.raises(LoraError, match="has no pytorch_lora_weights.safetensors"):
        pipe.load_lora("a", str(tmp_path))
    with pytest.raises(LoraError, match="LoRA name"):
        pipe.load_lora("a b", str(tmp_path))


def test_lru_keeps_max_loras_resident_and_reloads_on_use(adapters, tmp_path):
    adapters = {**adapters, "z": make_adapter(tmp_path / "z", 11)}
    pipe = make_pipe(max_loras=2)
    for name, path in adapters.items():
        pipe.load_lora(name, str(path))
    assert pipe.loras.names == ["x", "y", "z"] and list(pipe.loras.resident) == ["x", "y"]
    reference_pipe = make_pipe(max_loras=3)
    for name, path in adapters.items():
        reference_pipe.load_lora(name, str(path))
    loads = pipe.loras.loads
    for name in ("z", "x", "z", "y"):
        params = StreamParams(seed=1, lora=name, **STEP)
        out = pipe.run([(pipe.new_state(params), frame(1))])[0]
        expected = reference_pipe.run([(reference_pipe.new_state(params), frame(1))])[0]
        assert_close(expected, out, max_levels=0)
        assert len(pipe.loras.resident) <= 2 and next(reversed(pipe.loras.resident)) == name
    assert pipe.loras.loads - loads == 3  # z, then y (x stayed resident after z displaced y)
    # a batch that needs all three keeps them for that call, then trims back to two
    states = [pipe.new_state(StreamParams(seed=1, lora=n, **STEP)) for n in ("x", "y", "z")]
    together = pipe.run([(s, frame(1)) for s in states])
    assert len(pipe.loras.resident) == 2
    for name, out in zip(("x", "y", "z"), together):
        params = StreamParams(seed=1, lora=name, **STEP)
        assert_close(reference_pipe.run([(reference_pipe.new_state(params), frame(1))])[0], out,
                     max_mean=0.05)


def test_demo_unet_attention_adapter(tmp_path):
    # The built-in demo architecture with a random adapter on its attention projections (the
    # bench's). The random build: the trained demo leans on FiLM more than on cross-attention, so
    # a random adapter moves its pictures by well under a level.
    from livecast.streamdiff import StreamPipeline
    from livecast.streamdiff.lora_format import save_random_adapter

    pipe = StreamPipeline.from_pretrained("demo-random", device="cpu", dtype=torch.float32, resolution=64)
    path = save_random_adapter(copy.deepcopy(pipe.unet), tmp_path / "demo-style", seed=1, rank=8)
    adapter = pipe.load_lora("style", str(path))
    assert adapter.rank == 8 and all(".attn" in name for name in adapter.layers)
    image = frame(1, (64, 64))
    pipe.prepare("a cat", seed=1, **STEP)
    plain = pipe(image)
    pipe.update(lora="style")
    styled = pipe(image)
    assert np.abs(pixels(plain) - pixels(styled)).mean() > 1
