"""QLoRA-style serving: the real SmolLM2 in its shipped Q4_1 GGUF (int4 and int8 kernels) with a
float adapter equals peft's unmerged LoRA on an HF model whose base linears run the engine's own
quantized kernels (so the reference shares the base numerics: the kernels quantize activations,
and the model's greedy answers at near-ties depend on that, see tests/services/test_real_model.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from livecast.engine import LLMEngine, SamplingParams
from livecast.engine.quant.linear import QuantizedLinear
from tests.engine.lora.conftest import save_adapter
from tests.engine.lora.test_parity import run

QUESTIONS = ["What is the capital of France?"]
MAX_NEW = 12
# the engine's paged attention and HF's SDPA round differently, and the kernels' int8 activations
# carry that into the next layers: a position's logprob parts by up to ~0.3 (base and adapter
# alike), ~0.04-0.09 on average; a pick may be the runner-up of a near-tie (within TIE)
TIE, MAX_ERR, MEAN_ERR = 0.2, 0.6, 0.15
FUSED = {"q_proj": ("self_attn.qkv_proj", 0), "k_proj": ("self_attn.qkv_proj", 1),
         "v_proj": ("self_attn.qkv_proj", 2), "o_proj": ("self_attn.o_proj", None),
         "gate_proj": ("mlp.gate_up_proj", 0), "up_proj": ("mlp.gate_up_proj", 1), "down_proj": ("mlp.down_proj", None)}


class EngineLinear(nn.Linear):
    """An nn.Linear to peft (so it can wrap it with LoRA) that computes one part of an engine's
    quantized (fused) linear with the engine's kernel."""

    def __init__(self, module, start: int, size: int) -> None:
        super().__init__(module.in_features, size, bias=False, device="meta")
        # real storage (peft puts the LoRA weights on the base weight's device), never read
        self.weight = nn.Parameter(torch.empty(size, module.in_features), requires_grad=False)
        self.module, self.start, self.size = [module], start, size  # a list: not a submodule

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        out = self.module[0](flat)[:, self.start:self.start + self.size]
        return out.reshape(*x.shape[:-1], self.size)


def engine_numerics_model(smollm2_path, engine):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    ours = engine.model
    for i, layer in enumerate(model.model.layers):
        for name, (path, part) in FUSED.items():
            parent, _, attr = path.rpartition(".")
            hf_parent = layer.get_submodule(parent)
            module = ours.layers[i].get_submodule(path)
            if part is None:
                start, size = 0, module.out_features
            else:
                start, size = ours._shard_range(path, part)
            setattr(hf_parent, name, EngineLinear(module, start, size))
    model.lm_head = EngineLinear(ours.lm_head, 0, ours.lm_head.out_features)
    return model


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, smollm2_path):
    return save_adapter(smollm2_path, tmp_path_factory.mktemp("smollm2-lora") / "a", seed=3, strength=0.05,
                        r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])


@pytest.fixture(scope="module")
def prompts(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    encoded = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
               for q in QUESTIONS]
    return [list(e["input_ids"] if hasattr(e, "keys") else e) for e in encoded]


def teacher_forced(model, ids: list[int], tokens: list[int]) -> torch.Tensor:
    """(len(tokens), vocab) log-probabilities of each generated position given the tokens before it,
    computed as the engine does: the prompt in one pass, then one token per step (the quantized
    linears take another path for many rows)."""
    rows = []
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        rows.append(out.logits[0, -1])
        for t in tokens[:-1]:
            out = model(torch.tensor([[t]]), past_key_values=out.past_key_values, use_cache=True)
            rows.append(out.logits[0, -1])
    return torch.log_softmax(torch.stack(rows).float(), -1)


@pytest.mark.parametrize("weight_kernel", ["int4", "int8"])
def test_gguf_base_with_a_float_adapter_matches_peft_over_the_same_kernels(smollm2_path, adapter, prompts,
                                                                          weight_kernel):
    """Teacher-forced: every token the engine picks is the reference's argmax (to a near-tie) and its
    logprob the reference's; the paged attention and SDPA round differently, so exact greedy
    sequences can part at a near-tie."""
    from peft import PeftModel

    engine = LLMEngine(quantization="gguf", weight_kernel=weight_kernel, kv_cache_memory=64 << 20,
                       enable_lora=True, max_lora_rank=8)
    engine.add_lora("a", str(adapter))
    for module in engine.model.modules():  # the kernel at every step size, here and in the reference
        if isinstance(module, QuantizedLinear):
            module.dense_weight = None
    requests = [(f"{lora}-{i}", ids, SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True, logprobs=0,
                                                    lora=lora))
                for i, ids in enumerate(prompts) for lora in (None, "a")]
    outputs = run(engine, requests)
    base = engine_numerics_model(smollm2_path, engine)
    with_lora = PeftModel.from_pretrained(engine_numerics_model(smollm2_path, engine), adapter).eval()
    for i, ids in enumerate(prompts):
        for lora, model in ((None, base), ("a", with_lora)):
            out = outputs[f"{lora}-{i}"].outputs[0]
            ref = teacher_forced(model, ids, out.token_ids)
            picked = ref[torch.arange(len(out.token_ids)), out.token_ids]
            ours = torch.tensor([lp[t] for lp, t in zip(out.logprobs, out.token_ids)])
            gap, err = (ref.max(-1).values - picked), (ours - picked).abs()
            assert gap.max() <= TIE and err.max() <= MAX_ERR and err.mean() <= MEAN_ERR, (lora, i, gap, err)
        # the adapter acts: the base model scores the adapter's answer differently
        tokens = outputs[f"a-{i}"].outputs[0].token_ids
        effect = (teacher_forced(base, ids, tokens) - teacher_forced(with_lora, ids, tokens)).abs()
        assert effect.max() > 2 * MAX_ERR and effect.mean() > 2 * MEAN_ERR
