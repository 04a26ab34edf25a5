import pytest

from livecast.engine.config import EngineConfig
from livecast.engine.quant.int4 import Int4Linear
from livecast.engine.quant.int8 import Int8Linear
from livecast.engine.quant.loading import QuantizedCheckpoint


def test_auto_takes_the_checkpoints_own_quantization(smollm2_path):
    assert QuantizedCheckpoint.resolve("auto", None, smollm2_path).mode == "gguf"  # the default Q4_1 file
    assert QuantizedCheckpoint.resolve("auto", str(smollm2_path), smollm2_path).mode == "none"  # a dense folder
    assert QuantizedCheckpoint.resolve("none", None, smollm2_path).mode == "none"
    assert QuantizedCheckpoint.resolve("auto", None, smollm2_path, "cuda").mode == "none"  # int4 untimed there
    assert QuantizedCheckpoint.resolve("gguf", None, smollm2_path, "cuda").mode == "gguf"


def test_quantization_choices_are_validated(smollm2_path):
    with pytest.raises(ValueError, match="quantization must be one of auto, none, awq, gguf; got 'int3'"):
        EngineConfig(quantization="int3")
    with pytest.raises(ValueError, match="--quantization awq needs an AutoAWQ folder"):
        QuantizedCheckpoint.resolve("awq", str(smollm2_path), smollm2_path)
    with pytest.raises(ValueError, match="--quantization gguf needs a .gguf model"):
        QuantizedCheckpoint.resolve("gguf", str(smollm2_path), smollm2_path)


def test_default_gguf_runs_its_q4_1_blocks_natively(smollm2_path):
    from livecast.engine.llm import LLM
    from livecast.engine.sampling_params import SamplingParams

    llm = LLM(quantization="gguf", weight_kernel="int4", kv_cache_memory=16 << 20)
    engine = llm.engine
    assert engine.quantization == "gguf" and "Q4_1" in engine.quantization_detail
    modules = list(engine.model.modules())
    assert sum(isinstance(m, Int4Linear) for m in modules) == 4 * engine.hf_config.num_hidden_layers
    assert isinstance(engine.model.lm_head, Int8Linear)  # the tied Q8_0 embedding
    assert engine.model.native_decode is not None and "native fused decode step" in engine.quantization_detail
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=4))
    assert "Paris" in out[0].outputs[0].text


def test_the_int8_kernel_runs_the_same_q4_1_file(smollm2_path):
    """`weight_kernel=int8` (what `auto` picks where PyTorch's int8 CPU kernel measures faster)
    re-quantizes the Q4_1 blocks per row: every decoder linear is int8 and the answer holds."""
    from livecast.engine.llm import LLM
    from livecast.engine.sampling_params import SamplingParams

    llm = LLM(quantization="gguf", weight_kernel="int8", kv_cache_memory=16 << 20)
    modules = list(llm.engine.model.modules())
    assert not any(isinstance(m, Int4Linear) for m in modules)
    assert sum(isinstance(m, Int8Linear) for m in modules) == 4 * llm.engine.hf_config.num_hidden_layers + 1
    assert "int8" in llm.engine.quantization_detail
    out = llm.generate(["The capital of France is"], SamplingParams(temperature=0, max_tokens=4))
    assert "Paris" in out[0].outputs[0].text
