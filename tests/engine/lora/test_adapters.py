"""Adapters that cannot be served are refused by name and change nothing; a request keeps its
adapter through forks, beams, preemption and an unload; adapters never share KV blocks; a step
mixes at most max_loras adapters."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from livecast.engine import BeamSearchParams, LLMEngine, SamplingParams
from livecast.engine.lora import LoraError, LoraNotFound
from tests.engine.lora.conftest import ADAPTERS, greedy_with_logprobs, merged_model, save_adapter
from tests.engine.lora.test_parity import PROMPTS, make_engine, run

GREEDY = dict(temperature=0, max_tokens=8, ignore_eos=True)


def _copy_adapter(src, dst, config_edit=None, tensors_edit=None):
    dst.mkdir()
    config = json.loads((src / "adapter_config.json").read_text())
    tensors = load_file(str(src / "adapter_model.safetensors"))
    if config_edit:
        config_edit(config)
    if tensors_edit:
        tensors_edit(tensors)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(dst / "adapter_model.safetensors"))
    return dst


def _drop_one_b(tensors):
    del tensors[next(k for k in tensors if "lora_B" in k)]


@pytest.mark.parametrize("edit, expected", [
    (dict(config_edit=lambda c: c.update(r=2)), r"q_proj has lora_A \(4, 64\).*rank 2"),
    (dict(tensors_edit=_drop_one_b), "has no lora_B tensor"),
    (dict(config_edit=lambda c: c.update(use_dora=True)), "DoRA"),
    (dict(config_edit=lambda c: c.update(bias="all")), "bias"),
    (dict(tensors_edit=lambda t: t.update({"base_model.model.lm_head.lora_A.weight": torch.ones(4, 64)})),
     "lm_head"),
    (dict(tensors_edit=lambda t: t.update({k: v * float("nan") for k, v in t.items() if "lora_B" in k})), "NaN"),
])
def test_a_malformed_adapter_is_refused_by_name_and_changes_nothing(tiny_llama_path, tiny_adapters, tmp_path,
                                                                      edit, expected):
    engine = make_engine(tiny_llama_path, {"qv": tiny_adapters["qv"]}, "torch")
    before = dict(engine.loras)
    bad = _copy_adapter(tiny_adapters["qv"], tmp_path / "bad", **edit)
    with pytest.raises(LoraError, match=expected) as info:
        engine.add_lora("broken", str(bad))
    assert "'broken'" in str(info.value)
    assert engine.loras == before
    out = run(engine, [("r", PROMPTS[0], SamplingParams(**GREEDY, lora="qv"))])["r"]
    assert len(out.outputs[0].token_ids) == 8


def test_unsupported_targets_rank_and_files_are_refused(tiny_llama_path, tiny_adapters, tmp_path):
    engine = make_engine(tiny_llama_path, {}, "torch")
    embed = save_adapter(tiny_llama_path, tmp_path / "embed", seed=5, r=4, target_modules=["embed_tokens"])
    with pytest.raises(LoraError, match="embed_tokens"):
        engine.add_lora("embed", str(embed))
    big = save_adapter(tiny_llama_path, tmp_path / "big", seed=6, r=16, target_modules=["q_proj"])
    with pytest.raises(LoraError, match="rank 16, above this server's max_lora_rank 8"):
        engine.add_lora("big", str(big))
    with pytest.raises(LoraError, match="does not exist"):
        engine.add_lora("nowhere", str(tmp_path / "nowhere"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text((tiny_adapters["qv"] / "adapter_config.json").read_text())
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(LoraError, match="pickled"):
        engine.add_lora("pickled", str(pickled))
    engine.add_lora("qv", str(tiny_adapters["qv"]))
    with pytest.raises(LoraError, match="already loaded"):
        engine.add_lora("qv", str(tiny_adapters["all"]))
    assert list(engine.loras) == ["qv"]


def test_lora_must_be_enabled_and_names_must_exist(tiny_llama_path, tiny_adapters):
    plain = LLMEngine(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=4 << 20, block_size=8)
    with pytest.raises(LoraError, match="not enabled"):
        plain.add_lora("qv", str(tiny_adapters["qv"]))
    with pytest.raises(LoraNotFound):
        plain.add_request("x", PROMPTS[0], SamplingParams(lora="qv"))
    assert not plain.has_unfinished_requests()
    with pytest.raises(ValueError, match="deterministic"):
        LLMEngine(model=str(tiny_llama_path), lora_modules=f"qv={tiny_adapters['qv']}", deterministic=True)


def test_lora_modules_load_at_start(tiny_llama_path, tiny_adapters):
    spec = ",".join(f"{name}={path}" for name, path in tiny_adapters.items())
    engine = LLMEngine(model=str(tiny_llama_path), dtype="float32", kv_cache_memory=4 << 20, block_size=8,
                       lora_modules=spec, max_lora_rank=8)
    assert sorted(engine.loras) == sorted(ADAPTERS)
    assert engine.loras["all"].targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert engine.loras["mlp"].rank == 6


@pytest.fixture(scope="module")
def qv_reference(tiny_llama_path, tiny_adapters):
    model = merged_model(tiny_llama_path, tiny_adapters["qv"])
    return [greedy_with_logprobs(model, ids, 8)[0] for ids in PROMPTS]


@pytest.fixture(scope="module")
def base_reference(tiny_llama_path):
    model = merged_model(tiny_llama_path)
    return [greedy_with_logprobs(model, ids, 8)[0] for ids in PROMPTS]


def test_adapters_never_share_kv_blocks_but_reuse_their_own(tiny_llama_path, tiny_adapters, qv_reference,
                                                            base_reference):
    engine = make_engine(tiny_llama_path, tiny_adapters, "native")
    prompt = PROMPTS[3]  # 10 tokens: one full block of 8 to share
    bm = engine.block_manager
    assert run(engine, [("a", prompt, SamplingParams(**GREEDY, lora="qv"))])["a"].outputs[0].token_ids == qv_reference[3]
    hits = bm.prefix_hits
    assert run(engine, [("b", prompt, SamplingParams(**GREEDY))])["b"].outputs[0].token_ids == base_reference[3]
    assert bm.prefix_hits == hits  # the base found nothing of the adapter's
    run(engine, [("c", prompt, SamplingParams(**GREEDY, lora="all"))])
    assert bm.prefix_hits == hits
    assert run(engine, [("d", prompt, SamplingParams(**GREEDY, lora="qv"))])["d"].outputs[0].token_ids == qv_reference[3]
    assert bm.prefix_hits > hits  # its own blocks are found again


def test_a_step_mixes_at_most_max_loras_adapters(tiny_llama_path, tiny_adapters, qv_reference):
    engine = make_engine(tiny_llama_path, tiny_adapters, "native", max_loras=2)
    seen = []
    activate = engine.lora.slots.activate
    engine.lora.slots.activate = lambda adapters: seen.append({a.uid for a in adapters}) or activate(adapters)
    requests = [(f"{name}-{i}", ids, SamplingParams(**GREEDY, lora=name)) for i, ids in enumerate(PROMPTS)
                for name in ADAPTERS]
    outputs = run(engine, requests)
    assert len(outputs) == len(requests)
    assert max(len(s) for s in seen) == 2 and len(set().union(*seen)) == 3
    slots = engine.lora.slots
    assert slots.num_loads == 3 and len(slots.resident) == 2  # the third took the least recently used slot
    evicted = next(a for a in engine.loras.values() if a.uid not in slots.resident)
    run(engine, [("again", PROMPTS[0], SamplingParams(**GREEDY, lora=evicted.name))])
    assert slots.num_loads == 4 and evicted.uid in slots.resident
    assert [outputs[f"qv-{i}"].outputs[0].token_ids for i in range(len(PROMPTS))] == qv_reference


def test_forks_beams_preemption_and_unload_keep_the_adapter(tiny_llama_path, tiny_adapters, qv_reference):
    for mode in ("swap", "recompute"):
        # 12 blocks of 8 tokens: 4 requests of 18 tokens each with 2 greedy samples cannot all fit
        engine = LLMEngine(model=str(tiny_llama_path), dtype="float32", block_size=8, enable_lora=True,
                           max_lora_rank=8, preemption_mode=mode, swap_space=0.001 if mode == "swap" else 0,
                           kv_cache_memory=_bytes_for_blocks(tiny_llama_path, 12))
        engine.add_lora("qv", str(tiny_adapters["qv"]))
        requests = [(f"r{i}", ids, SamplingParams(**GREEDY, n=2, best_of=2, lora="qv")) for i, ids in enumerate(PROMPTS)]
        outputs = run(engine, requests)
        assert engine.scheduler.num_preemptions > 0, mode
        for i in range(len(PROMPTS)):
            assert [o.token_ids for o in outputs[f"r{i}"].outputs] == [qv_reference[i]] * 2, (mode, i)
        assert engine.block_manager.device.num_free == engine.block_manager.device.num_blocks
    # beams with the adapter equal beams of an engine serving the merged weights as its base
    engine = make_engine(tiny_llama_path, {"qv": tiny_adapters["qv"]}, "native")
    beams = run(engine, [("b", PROMPTS[1], BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True,
                                                             lora="qv"))])["b"]
    merged = _merged_folder(tiny_llama_path, tiny_adapters["qv"])
    plain = LLMEngine(model=str(merged), dtype="float32", kv_cache_memory=8 << 20, block_size=8)
    expected = run(plain, [("b", PROMPTS[1], BeamSearchParams(beam_width=3, max_tokens=6, ignore_eos=True))])["b"]
    assert [o.token_ids for o in beams.outputs] == [o.token_ids for o in expected.outputs]
    # unloading while a request runs: it finishes with the adapter; new requests cannot name it
    engine.add_request("late", PROMPTS[0], SamplingParams(**GREEDY, lora="qv"))
    engine.step()
    engine.remove_lora("qv")
    with pytest.raises(LoraNotFound):
        engine.add_request("later", PROMPTS[0], SamplingParams(**GREEDY, lora="qv"))
    assert run(engine, [])["late"].outputs[0].token_ids == qv_reference[0]


def _bytes_for_blocks(path, blocks: int) -> int:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    head_dim = c.hidden_size // c.num_attention_heads
    return blocks * 2 * c.num_hidden_layers * 8 * c.num_key_value_heads * head_dim * 4


def _merged_folder(base, adapter):
    out = adapter.parent / f"{adapter.name}-merged"
    if not out.exists():
        model = merged_model(base, adapter)
        model.save_pretrained(out, safe_serialization=True)
        for f in base.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                (out / f.name).write_bytes(f.read_bytes())
    return out


def test_slots_hold_only_the_projections_adapters_touch(tiny_llama_path, tiny_adapters, tmp_path):
    """Stacks are allocated on first use: q|v adapters never pay for MLP stacks; an adapter on
    some layers only (PEFT's layers_to_transform) leaves the others without any and still matches."""
    one_layer = save_adapter(tiny_llama_path, tmp_path / "o1", seed=9, r=4, lora_alpha=8, target_modules=["o_proj"],
                             layers_to_transform=[1])
    engine = make_engine(tiny_llama_path, {"qv": tiny_adapters["qv"], "o1": one_layer}, "native")
    slots = engine.lora.slots
    assert slots.nbytes == 0
    run(engine, [("a", PROMPTS[0], SamplingParams(**GREEDY, lora="qv"))])
    assert [sorted(layer) for layer in slots.stacks] == [["q_proj", "v_proj"]] * 2
    per_slot = sum(s.a[0].nbytes + s.b[0].nbytes for layer in slots.stacks for s in layer.values())
    assert slots.nbytes == per_slot * slots.num_slots
    assert per_slot == 2 * 2 * 8 * (2 * 64 + 64 + 32)  # layers x bfloat16 x max_rank x (q: 64+64, v: 64+32)
    out = run(engine, [("b", PROMPTS[2], SamplingParams(**GREEDY, lora="o1"))])["b"].outputs[0].token_ids
    assert [sorted(layer) for layer in slots.stacks] == [["q_proj", "v_proj"], ["o_proj", "q_proj", "v_proj"]]
    expected = greedy_with_logprobs(merged_model(tiny_llama_path, one_layer), PROMPTS[2], 8)[0]
    assert out == expected
    assert expected != greedy_with_logprobs(merged_model(tiny_llama_path), PROMPTS[2], 8)[0]
