"""Tiny PEFT adapters made here (none exist offline), and the HF + peft merged reference."""
from __future__ import annotations

import pytest
import torch

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# three adapters unlike each other: targets, ranks, alpha, rsLoRA and a per-module rank
ADAPTERS = {
    "qv": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "all": dict(r=8, lora_alpha=16, target_modules=ALL, use_rslora=True),
    "mlp": dict(r=2, lora_alpha=2, target_modules=["o_proj", "gate_proj", "down_proj"],
                rank_pattern={"down_proj": 6}, alpha_pattern={"down_proj": 3}),
}


def save_adapter(base_path, out, seed: int, strength: float = 0.15, **lora_kwargs):
    """A PEFT adapter with random A and B (peft starts B at zero: an identity that proves nothing),
    whose values are bfloat16's: the engine keeps adapters in bfloat16 (lora_dtype auto), so
    parity with float32 HF + peft is exact up to the float32 sums."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora_kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.normal_(0, strength)
                p.copy_(p.bfloat16().float())  # bfloat16 values, as adapters are usually trained and kept
    peft_model.save_pretrained(out)
    return out


def merged_model(base_path, adapter_path=None, state_dict=None):
    """The HF model with the adapter merged into its weights: what the engine must compute."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=False)
    if adapter_path is not None:
        model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()
    return model.eval()


def greedy_with_logprobs(model, ids: list[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
    with torch.no_grad():
        x = torch.tensor([ids])
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        tokens = out.sequences[0, len(ids):].tolist()
        logprobs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, tokens)]
    return tokens, logprobs


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_llama_path):
    root = tmp_path_factory.mktemp("tiny-adapters")
    return {name: save_adapter(tiny_llama_path, root / name, seed=i, **kw)
            for i, (name, kw) in enumerate(ADAPTERS.items())}
