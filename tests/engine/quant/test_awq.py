import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from livecast.engine.quant import awq_format
from livecast.engine.quant.awq import AWQConfig, quantize_model
from livecast.engine.quant.int4 import Int4Linear, QuantizedWeight, quantize_rtn

GROUP = 32


@pytest.fixture(scope="module")
def outlier_llama(tiny_llama_path):
    """The tiny random Llama with a few large activation channels, as trained LLMs have."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:4] *= 10
            layer.post_attention_layernorm.weight[5:9] *= 10
    return model


@pytest.fixture(scope="module")
def awq_model(outlier_llama):
    torch.manual_seed(1)
    model = copy.deepcopy(outlier_llama)
    calib = torch.randint(0, model.config.vocab_size, (4, 32))
    quantized = quantize_model(model, calib, AWQConfig(group_size=GROUP, num_grid=10), progress=False)
    return model, quantized


def _with_weights(model, weights: dict[str, torch.Tensor]):
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, w in weights.items():
            model.get_submodule(name).weight.copy_(w)
    return model


@torch.no_grad()
def test_awq_lowers_output_error_against_rtn(outlier_llama, awq_model):
    scaled, quantized = awq_model
    test_ids = torch.randint(0, outlier_llama.config.vocab_size, (2, 48), generator=torch.Generator().manual_seed(2))
    reference = outlier_llama(test_ids).logits
    torch.testing.assert_close(scaled(test_ids).logits, reference, atol=2e-3, rtol=1e-3)  # folding is exact
    rtn = _with_weights(outlier_llama, {n: quantize_rtn(m.weight, GROUP).dequantize()
                                        for n, m in outlier_llama.named_modules() if n.startswith("model.layers.")
                                        and isinstance(m, torch.nn.Linear)})
    awq = _with_weights(scaled, {n: w.dequantize() for n, w in quantized.items()})
    rtn_error = (rtn(test_ids).logits - reference).pow(2).mean().item()
    awq_error = (awq(test_ids).logits - reference).pow(2).mean().item()
    assert awq_error < 0.9 * rtn_error, (awq_error, rtn_error)  # measured 0.84x here


def test_pack_matches_autoawq_from_linear_loop():
    """`pack` against the loop in AutoAWQ's WQLinear_GEMM.from_linear, transcribed literally."""
    torch.manual_seed(3)
    intweight = torch.randint(0, 16, (64, 48), dtype=torch.int32)  # (in_features, out_features)
    qweight = torch.zeros((64, 48 // 8), dtype=torch.int32)
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    for col in range(48 // 8):
        for i in range(8):
            qweight[:, col] |= intweight[:, col * 8 + order_map[i]] << (i * 4)
    assert torch.equal(awq_format.pack(intweight), qweight)
    assert torch.equal(awq_format.unpack(qweight), intweight)


@pytest.fixture(scope="module")
def awq_folder(tmp_path_factory, tiny_llama_path, awq_model):
    model, quantized = awq_model
    out = tmp_path_factory.mktemp("tiny-awq")
    config = model.config.to_dict()
    awq_format.save_folder(tiny_llama_path, out, model.state_dict(), quantized, config)
    return out


def test_awq_folder_has_the_autoawq_gemm_layout(awq_folder, awq_model):
    _, quantized = awq_model
    qcfg = json.loads((awq_folder / "config.json").read_text())["quantization_config"]
    assert qcfg == {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm",
                    "modules_to_not_convert": None}
    tensors = load_file(str(awq_folder / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj"
    assert f"{name}.weight" not in tensors
    assert tensors[f"{name}.qweight"].shape == (128, 64 // 8) and tensors[f"{name}.qweight"].dtype == torch.int32
    assert tensors[f"{name}.qzeros"].shape == (128 // GROUP, 64 // 8)
    assert tensors[f"{name}.scales"].shape == (128 // GROUP, 64) and tensors[f"{name}.scales"].dtype == torch.float16
    back = {}
    list(awq_format.split_weights(tensors.items(), GROUP, back))
    for module, weight in quantized.items():
        read = back[module.removeprefix("model.")]
        assert torch.equal(read.codes, weight.codes) and torch.equal(read.scales, weight.scales)
        torch.testing.assert_close(read.mins, weight.mins)


def test_awq_folder_loads_into_the_engine_with_the_same_outputs(awq_folder, awq_model):
    from livecast.engine.llm import LLM
    from livecast.engine.sampling_params import SamplingParams

    _, quantized = awq_model
    llm = LLM(model=str(awq_folder), dtype="float32", kv_cache_memory=8 << 20, block_size=8, weight_kernel="int4")
    assert llm.engine.quantization == "awq"
    qkv = llm.engine.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv, Int4Linear)
    parts = [quantized[f"model.layers.0.self_attn.{p}_proj"] for p in "qkv"]
    expected = Int4Linear(QuantizedWeight.cat(parts))
    x = torch.randn(5, qkv.in_features)
    assert torch.equal(qkv.weight_mm(x), expected.weight_mm(x))  # the same weights (the dense copy aside)
    out = llm.generate(["Hello there"], SamplingParams(temperature=0, max_tokens=6))
    assert len(out[0].outputs[0].token_ids) == 6


def _corrupt(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    tensors = load_file(str(dst / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.scales", torch.ones(3, 64, dtype=torch.float16)),
     r"model\.layers\.0\.self_attn\.q_proj\.scales: shape \(3, 64\) does not match qweight"),
    (lambda t: t.pop("model.layers.1.mlp.up_proj.qzeros"), r"model\.layers\.1\.mlp\.up_proj: .*missing .*qzeros"),
    (lambda t: t.__setitem__("model.layers.0.mlp.down_proj.qweight", torch.zeros(128, 8, dtype=torch.float32)),
     r"model\.layers\.0\.mlp\.down_proj\.qweight/\.qzeros must be int32"),
])
def test_corrupt_awq_checkpoint_fails_at_load_naming_the_tensor(awq_folder, tmp_path, edit, message):
    from livecast.engine.llm import LLM

    folder = _corrupt(awq_folder, tmp_path / "bad", edit)
    with pytest.raises(ValueError, match=message):
        LLM(model=str(folder), dtype="float32", kv_cache_memory=8 << 20, block_size=8)


def test_unsupported_quant_method_is_refused(awq_folder, tmp_path):
    import shutil

    from livecast.engine.llm import LLM

    folder = tmp_path / "gptq"
    shutil.copytree(awq_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["quant_method"] = "gptq"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quant_method 'gptq' is not supported"):
        LLM(model=str(folder), dtype="float32", kv_cache_memory=8 << 20, block_size=8)


def test_quantize_cli_writes_a_loadable_folder(tiny_llama_path, tmp_path, capsys):
    from livecast.engine.quant.cli import main

    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog.\n\n" * 40)
    out = tmp_path / "awq"
    assert main(["awq", "--model", str(tiny_llama_path), "--out", str(out), "--calib", str(calib),
                 "--group-size", "32", "--samples", "2", "--seq-len", "32"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["linears"] == 2 * 7 and summary["group_size"] == GROUP
    assert awq_format.read_config(out)["group_size"] == GROUP
    assert main(["awq", "--model", str(tiny_llama_path), "--out", str(tmp_path / "x"), "--group-size", "256"]) == 2
    assert "in_features 64 is not a multiple of group_size 256" in capsys.readouterr().err
