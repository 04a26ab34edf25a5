"""Engine configuration: one slotted dataclass, validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from livecast.engine.backend import Backend, choose_backend
from livecast.kernels.cpu import native_bf16

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
          "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}


@dataclass(slots=True)
class EngineConfig:
    model: str | None = field(default=None, metadata={
        "help": "HF folder, .gguf, or cached hub id (default: SmolLM2-135M-Instruct)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the device computes it natively, else float32; float32 for quantized weights on the native CPU kernels), float32, float16"})
    quantization: str = field(default="auto", metadata={
        "help": "weights: auto (the checkpoint's own: GGUF Q4/Q8 blocks or AWQ int4), none (dense), awq, gguf"})
    weight_kernel: str = field(default="auto", metadata={
        "help": "kernel for int4 checkpoints on a CPU: auto (int4, or int8 re-quantized per row where that "
                "measures faster at decode sizes), int4, int8"})
    device: str = "auto"
    block_size: int = 16
    kv_cache_memory: int | None = field(default=None, metadata={  # bytes
        "flag": "--kv-cache-gb", "unit": "GiB", "help": "KV cache size (default: 85% of free GPU memory, 2 GiB on a CPU)"})
    gpu_memory_utilization: float = 0.85
    swap_space: float = 1.0  # GiB of CPU memory for swapped-out blocks
    max_num_seqs: int = field(default=128, metadata={"help": "sequences that run in one step at most"})
    max_num_batched_tokens: int = field(default=1024, metadata={"help": "tokens one step runs at most"})
    max_best_of: int = field(default=32, metadata={
        "help": "sequences one request may sample at most (n, best_of, beam width)"})
    max_model_len: int | None = field(default=None, metadata={"help": "context length (default: the model's)"})
    max_waiting: int = field(default=1024, metadata={
        "flag": "--max-queue", "help": "waiting requests beyond this are refused with 503 + Retry-After"})
    enable_prefix_caching: bool = True
    jump_forward: bool = field(default=True, metadata={  # see OutputProcessor
        "help": "append grammar-forced text (JSON keys, tool-call frames) without sampling"})
    preemption_mode: str = "swap"
    attention_backend: str = "auto"  # "torch", "triton" or "auto" (triton on CUDA)
    deterministic: bool = field(default=False, metadata={
        "help": "batch-invariant numerics on a CPU: a request's tokens do not depend on what else runs, the "
                "prefill chunking or prefix-cache hits (every row through the same native kernels)"})
    speculative: str | None = field(default=None, metadata={
        "help": "speculative decoding: ngram (prompt lookup: drafts copied from the request's own "
                "earlier tokens), suffix (SuffixDecoding: suffix trees over the request and over recent "
                "requests' outputs) or draft (a small model, --draft-model); verified in one step, exact: "
                "the output distribution is unchanged"})
    draft_model: str | None = field(default=None, metadata={
        "help": "--speculative draft: a Llama-family HF folder or .gguf with the target's tokenizer"})
    draft_kv_cache_memory: int | None = field(default=None, metadata={  # bytes
        "flag": "--draft-kv-cache-gb", "unit": "GiB",
        "help": "the draft model's own paged KV cache (default: a quarter of the target's)"})
    num_speculative_tokens: int = field(default=4, metadata={
        "help": "drafts per step at most (each request adapts its own to its acceptance)"})
    spec_max_batch: int = field(default=8, metadata={
        "help": "no speculation in a step with more running sequences than this (compute-bound)"})
    enable_lora: bool = field(default=False, metadata={
        "help": "serve LoRA adapters of the base model (implied by --lora-modules); requests name one in `model`"})
    lora_modules: str | None = field(default=None, metadata={
        "help": "PEFT adapter folders to load at start: name=PATH,name2=PATH2 (each served as a model)"})
    max_loras: int = field(default=4, metadata={
        "help": "adapters resident at once (one step mixes at most this many; least recently used swap out)"})
    max_lora_rank: int = field(default=16, metadata={
        "help": "largest adapter rank accepted (1-64); resident slots are sized for it"})
    lora_dtype: str = field(default="auto", metadata={
        "help": "adapters' weights in memory: auto (bfloat16; float32 for the Triton kernels), bfloat16, "
                "float32 (the update is computed in float32 either way)"})
    seed: int = 0
    num_threads: int | None = None
    stats_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.quantization not in ("auto", "none", "awq", "gguf"):
            raise ValueError(f"quantization must be one of auto, none, awq, gguf; got {self.quantization!r}")
        if self.weight_kernel not in ("auto", "int4", "int8"):
            raise ValueError(f"weight_kernel must be one of auto, int4, int8; got {self.weight_kernel!r}")
        if self.block_size < 1 or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {self.block_size}")
        if self.attention_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"attention_backend must be auto, torch or triton; got {self.attention_backend!r}")
        if self.kv_cache_memory is not None and self.kv_cache_memory <= 0:
            raise ValueError(f"kv_cache_memory must be positive, got {self.kv_cache_memory}")
        if self.max_best_of < 1:
            raise ValueError(f"max_best_of must be >= 1, got {self.max_best_of}")
        if self.max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {self.max_waiting}")
        if self.swap_space < 0:
            raise ValueError(f"swap_space must be >= 0 GiB, got {self.swap_space}")
        if self.speculative not in (None, "ngram", "suffix", "draft"):
            raise ValueError(f"speculative must be ngram, suffix, draft or unset, got {self.speculative!r}")
        if (self.speculative == "draft") != (self.draft_model is not None):
            raise ValueError("--speculative draft needs --draft-model PATH" if self.draft_model is None else
                             f"draft_model {self.draft_model!r} is only used with --speculative draft")
        if self.draft_kv_cache_memory is not None and self.draft_kv_cache_memory <= 0:
            raise ValueError(f"draft_kv_cache_memory must be positive, got {self.draft_kv_cache_memory}")
        if self.num_speculative_tokens < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {self.num_speculative_tokens}")
        if self.spec_max_batch < 1:
            raise ValueError(f"spec_max_batch must be >= 1, got {self.spec_max_batch}")
        if not 1 <= self.max_loras <= 64:
            raise ValueError(f"max_loras must be in [1, 64], got {self.max_loras}")
        if self.lora_dtype not in ("auto", "bfloat16", "float32"):
            raise ValueError(f"lora_dtype must be auto, bfloat16 or float32, got {self.lora_dtype!r}")
        if not 1 <= self.max_lora_rank <= 64:
            raise ValueError(f"max_lora_rank must be in [1, 64], got {self.max_lora_rank}")
        if self.lora_modules:
            self.enable_lora = True
        if self.enable_lora and self.deterministic:
            raise ValueError("deterministic numerics do not take LoRA adapters yet (enable_lora or lora_modules)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        """`auto`: bf16 on CUDA and on CPUs with bf16 arithmetic; float32 where bf16 is emulated."""
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        return torch.bfloat16 if self.torch_device().type == "cuda" or native_bf16() else torch.float32

    def backend(self) -> Backend:
        return choose_backend(self.attention_backend, self.torch_device(), self.deterministic)
