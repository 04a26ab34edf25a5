"""Choose where a model's quantized weights come from and load them: AWQ folder, GGUF blocks,
or none. On a CPU, `auto` takes the checkpoint's own quantization: the packed int4 matmul beat
bf16 at every step size on the 2-core AVX2 test machine (SmolLM2 linears, batch 1: 8.6 vs
12.6 ms; 128: 0.48 vs 1.43 s) and a dense copy covers the large steps where fp32 wins (`apply`).
On CUDA `auto` stays dense: the Triton int4 kernel is verified, not yet timed against cuBLAS."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn

from livecast.engine.quant import awq_format
from livecast.engine.quant.apply import MODES, attach_dense, choose_kernel, swap_linears
from livecast.engine.quant.int4 import QuantizedWeight


def gguf_source(model: str | os.PathLike | None) -> Path | None:
    """The .gguf file a model argument names (None → the default SmolLM2 file), else None."""
    from livecast.engine.model_loader import default_gguf_path

    if model is None:
        return default_gguf_path()
    path = Path(model).expanduser()
    return path if path.is_file() and path.suffix == ".gguf" else None


@dataclass(slots=True)
class QuantizedCheckpoint:
    """Quantized tensors gathered while the dense loader fills the model; keys are HF module names
    without `model.` (`layers.0.self_attn.q_proj`, `lm_head`)."""
    mode: str  # none | awq | gguf
    int4: dict[str, QuantizedWeight] = field(default_factory=dict)
    int8: dict[str, torch.Tensor] = field(default_factory=dict)
    source_types: set[str] = field(default_factory=set)

    @classmethod
    def resolve(cls, mode: str, model: str | os.PathLike | None, model_path: Path,
                device_type: str = "cpu") -> "QuantizedCheckpoint":
        if mode not in MODES:
            raise ValueError(f"quantization must be one of {', '.join(MODES)}; got {mode!r}")
        awq = awq_format.read_config(model_path) is not None
        gguf = gguf_source(model) is not None
        if mode == "awq" and not awq:
            raise ValueError(f"--quantization awq needs an AutoAWQ folder; {str(model_path)!r} has no awq "
                             "quantization_config (make one with `livecast quantize awq`)")
        if mode == "gguf" and not gguf:
            raise ValueError(f"--quantization gguf needs a .gguf model, got {model!r}")
        if mode == "auto":
            mode = "none" if device_type != "cpu" else "awq" if awq else "gguf" if gguf else "none"
        return cls(mode)

    def weights(self, model: str | os.PathLike | None, model_path: Path, hf_config,
                dense: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
        """What `LlamaForCausalLM.load_weights` reads: dense tensors, quantized ones dequantized
        (an AWQ folder under `none` loads dequantized)."""
        if self.mode == "awq" or (self.mode == "none" and awq_format.read_config(model_path)):
            group_size = awq_format.read_config(model_path)["group_size"]
            gathered = self.int4 if self.mode == "awq" else {}
            yield from awq_format.split_weights(dense, group_size, gathered)
            return
        if self.mode != "gguf":
            yield from dense
            return
        tied = bool(getattr(hf_config, "tie_word_embeddings", False))
        for name, value, qtype in _native_gguf(gguf_source(model), hf_config):
            module = name.removeprefix("model.").removesuffix(".weight")
            if isinstance(value, QuantizedWeight):
                self.int4[module], value = value, value.dequantize()
            elif qtype == "Q8_0" and (module != "embed_tokens" or tied):
                self.int8["lm_head" if module == "embed_tokens" else module] = value
            if qtype.startswith("Q"):
                self.source_types.add(qtype)
            yield name, value

    def apply(self, model: nn.Module, device: torch.device, kernel: str = "auto", dense_copy: bool = True) -> str:
        """Swap the quantized linears in (after the model reached its device and dtype); returns
        the description logged at load and reported by the server. `dense_copy=False` keeps the
        quantized kernel at every step size (deterministic numerics)."""
        if self.mode == "none":
            return "none (dense weights)"
        fused = swap_linears(model, self.int4, self.int8, device)
        kernel = choose_kernel(model, fused, device, kernel) if fused else "int4"
        schedule = attach_dense(model, fused, device, kernel) if dense_copy else f"{kernel} at every step size"
        types = "/".join(sorted(self.source_types)) or "AutoAWQ GEMM"
        int8 = f", {len(self.int8)} int8" if self.int8 else ""
        return f"{self.mode} ({types}): {len(self.int4)} int4{int8} linears; {schedule}"


def _native_gguf(path: Path, hf_config) -> list[tuple[str, QuantizedWeight | torch.Tensor, str]]:
    """`read_gguf`, cached as safetensors beside the converted folder: parsing the GGUF's
    metadata (the tokenizer's 49k strings) takes seconds; the cache loads in a fraction of one."""
    import json

    from safetensors.torch import load_file, save_file

    from livecast.engine.model_loader import cache_root
    from livecast.engine.quant.gguf import BLOCK, read_gguf

    cache = cache_root() / "models" / f"{path.stem}-{path.stat().st_size:x}-native.safetensors"
    if cache.exists():
        from safetensors import safe_open

        with safe_open(str(cache), framework="pt") as f:
            types = json.loads(f.metadata()["types"])
        tensors = load_file(str(cache))
        return [(name, QuantizedWeight(tensors[f"{name}.codes"], tensors[f"{name}.scales"],
                                       tensors[f"{name}.mins"], BLOCK) if qtype.startswith("Q4") else tensors[name],
                 qtype) for name, qtype in types.items()]
    items = list(read_gguf(path, hf_config.num_attention_heads, hf_config.num_key_value_heads))
    tensors = {}
    for name, value, _ in items:
        if isinstance(value, QuantizedWeight):
            tensors.update({f"{name}.codes": value.codes, f"{name}.scales": value.scales, f"{name}.mins": value.mins})
        else:
            tensors[name] = value.contiguous()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp-{os.getpid()}-{threading.get_ident()}")  # others may convert too
    save_file(tensors, str(tmp), metadata={"types": json.dumps({n: q for n, _, q in items})})
    os.replace(tmp, cache)  # atomic: a reader sees the old file or the whole new one
    return items
