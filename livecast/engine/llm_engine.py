"""The engine step: schedule → run model → postprocess. Single-threaded; AsyncLLMEngine wraps it."""
from __future__ import annotations

import itertools
import logging
import time

import torch

from livecast.engine.block_manager import BlockManager
from livecast.engine.config import EngineConfig
from livecast.engine.lora import LoraAdapter, LoraRegistry, ModuleShapes, parse_modules
from livecast.engine.lora.batch import choose_kernel
from livecast.engine.model_input import build_model_input
from livecast.engine.model_loader import build_model, eos_token_ids, load_config, load_tokenizer, resolve_model
from livecast.engine.model_runner import ModelRunner
from livecast.engine.models.llama import LlamaForCausalLM
from livecast.engine.request_output import CompletionOutput, RequestOutput
from livecast.engine.sample_step import Postprocessor
from livecast.engine.sampling_params import BeamSearchParams, SamplingParams
from livecast.engine.scheduler import Scheduler, SchedulerConfig
from livecast.engine.sequence import Sequence, SequenceGroup, SequenceStatus
from livecast.engine.sequence_updates import OutputProcessor
from livecast.engine.spec import Speculator, make_proposer
from livecast.engine.stats import EngineStats, StatsTracker

logger = logging.getLogger("livecast.engine")

CPU_DEFAULT_KV_BYTES = 2 << 30


class QueueFullError(RuntimeError):
    pass


class LLMEngine:
    def __init__(self, config: EngineConfig | None = None, **kwargs) -> None:
        self.config = config = config or EngineConfig(**kwargs)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.device, self.dtype = config.torch_device(), config.torch_dtype()
        self.model_path = resolve_model(config.model)
        self.model_name = config.model or "SmolLM2-135M-Instruct"
        self.hf_config = hf = load_config(self.model_path)
        self.tokenizer = load_tokenizer(self.model_path)
        self.eos_token_ids = eos_token_ids(self.model_path, hf, self.tokenizer)
        max_len = config.max_model_len or min(getattr(hf, "max_position_embeddings", 4096), 32768)
        if config.max_model_len and config.max_model_len > getattr(hf, "max_position_embeddings", 1 << 30):
            raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's "
                             f"max_position_embeddings {hf.max_position_embeddings}")
        self.backend = config.backend()
        self.model = self._load_model(max_len)

        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        # the deterministic attention reads float32 K/V (bf16 values widen exactly)
        kv_dtype = torch.float32 if self.backend.deterministic else self.dtype
        block_bytes = ModelRunner.bytes_per_block(hf.num_hidden_layers, hf.num_key_value_heads, head_dim,
                                                  config.block_size, kv_dtype)
        num_blocks = self._kv_budget() // block_bytes
        if num_blocks < 2:
            raise ValueError(f"KV cache budget {self._kv_budget()} bytes holds fewer than 2 blocks "
                             f"of {block_bytes} bytes; raise kv_cache_memory")
        num_cpu_blocks = int(config.swap_space * (1 << 30)) // block_bytes
        self.block_size = config.block_size
        self.max_model_len = min(max_len, num_blocks * config.block_size)
        self.runner = ModelRunner(self.model, hf.num_hidden_layers, hf.num_key_value_heads, head_dim,
                                  num_blocks, num_cpu_blocks, config.block_size, kv_dtype, self.device,
                                  self.backend)
        self.block_manager = BlockManager(num_blocks, config.block_size, num_cpu_blocks,
                                          config.enable_prefix_caching)
        self.speculator = None if config.speculative is None else Speculator(
            make_proposer(config.speculative, self), config.num_speculative_tokens, config.spec_max_batch)
        lora_kernel = choose_kernel(self.backend) if config.enable_lora else "torch"
        if lora_kernel == "triton" and config.lora_dtype == "bfloat16":
            raise ValueError("lora_dtype bfloat16 needs the native or torch LoRA kernels; the Triton ones take float32")
        lora_dtype = torch.float32 if config.lora_dtype == "float32" or (
            config.lora_dtype == "auto" and lora_kernel == "triton") else torch.bfloat16
        self.lora = LoraRegistry(config.enable_lora, ModuleShapes.of(hf), config.max_loras, config.max_lora_rank,
                                 self.device, self.model_name, lora_kernel, lora_dtype)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   config.preemption_mode, config.max_loras),
                                   self.block_manager, self.speculator)
        self._seq_ids = itertools.count()
        self.processor = OutputProcessor(self.tokenizer, self.block_manager, self.eos_token_ids,
                                         self.max_model_len, lambda: next(self._seq_ids), config.jump_forward)
        self.postprocess = Postprocessor(self.block_manager, self.processor, self.eos_token_ids, self.speculator)
        self.requests: dict[str, SequenceGroup] = {}
        self.step_errors: dict[str, Exception] = {}
        self.stats_tracker = StatsTracker()
        for name, path in parse_modules(config.lora_modules):
            self.add_lora(name, path)
        logger.info("model %s (%s, %s, %s) · KV cache: %d blocks x %d tokens = %d tokens (%.2f GiB) · "
                    "CPU swap: %d blocks (%.2f GiB) · max_model_len %d · attention: %s",
                    self.model_name, hf.architectures[0], self.dtype, self.device, num_blocks, config.block_size,
                    num_blocks * config.block_size, num_blocks * block_bytes / (1 << 30), num_cpu_blocks,
                    num_cpu_blocks * block_bytes / (1 << 30), self.max_model_len,
                    self.backend.reason)

    def _load_model(self, max_positions: int) -> LlamaForCausalLM:
        config = self.config
        model, self.dtype, self.quantization, self.quantization_detail = build_model(
            config.model, self.model_path, self.hf_config, self.device, self.dtype, config.dtype, self.backend,
            max_positions, config.quantization, config.weight_kernel)  # quantization: none | awq | gguf, for /health
        logger.info("weights: %s", self.quantization_detail)
        return model

    def _kv_budget(self) -> int:
        if self.config.kv_cache_memory:
            return self.config.kv_cache_memory
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return int(free - total * (1 - self.config.gpu_memory_utilization))
        return CPU_DEFAULT_KV_BYTES

    # -- requests ------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | BeamSearchParams,
                    arrival_time: float | None = None) -> SequenceGroup:
        """Validate and queue a request. Raises ValueError naming the problem."""
        group = self.make_request(request_id, prompt, params, arrival_time)
        self.enqueue(group)
        return group

    def enqueue(self, group: SequenceGroup) -> None:
        if group.request_id in self.requests:
            raise ValueError(f"request_id {group.request_id!r} is already in use")
        if len(self.scheduler.waiting) >= self.config.max_waiting:
            raise QueueFullError(f"{len(self.scheduler.waiting)} requests are already waiting")
        self.requests[group.request_id] = group
        self.scheduler.add(group)

    def make_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | BeamSearchParams,
                     arrival_time: float | None = None) -> SequenceGroup:
        """Tokenize and validate without touching engine state (safe from another thread)."""
        if isinstance(prompt, str):
            text, token_ids = prompt, self.tokenize(prompt) if prompt else []
        else:
            text, token_ids = None, list(prompt)
        self._validate(token_ids, params)
        if isinstance(params, SamplingParams) and params.max_tokens is None:
            params.max_tokens = self.max_model_len - len(token_ids)
        lora = self.lora.resolve(params.lora)
        seq = Sequence(next(self._seq_ids), list(token_ids), len(token_ids),
                       cache_salt=None if lora is None else hash(("lora", lora.uid)))
        self.processor.detokenizer.start(seq)
        group = SequenceGroup(request_id, text, token_ids, params, [seq],
                              arrival_time=arrival_time or time.monotonic(), lora=lora)
        if isinstance(params, SamplingParams):
            if params.seed is not None:
                group.generator = torch.Generator(device=self.device).manual_seed(params.seed)
            if params.grammar is not None:
                seq.grammar_matcher = params.grammar()
        return group

    def _validate(self, token_ids: list[int], params) -> None:
        if not isinstance(params, (SamplingParams, BeamSearchParams)):
            raise ValueError(f"params must be SamplingParams or BeamSearchParams, got {type(params).__name__}")
        if not token_ids:
            raise ValueError("prompt is empty")
        vocab = self.hf_config.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        if isinstance(params, SamplingParams):
            for name, ids in (("stop_token_ids", params.stop_token_ids), ("logit_bias", params.logit_bias or {})):
                if any(t >= vocab for t in ids):
                    raise ValueError(f"{name} has token ids outside the vocabulary [0, {vocab})")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt is {len(token_ids)} tokens, but max_model_len is {self.max_model_len} "
                             "(the prompt must leave room for at least one generated token)")
        max_tokens = params.max_tokens
        if max_tokens is not None and len(token_ids) + max_tokens > self.max_model_len:
            raise ValueError(f"max_tokens ({max_tokens}) + prompt ({len(token_ids)} tokens) exceeds "
                             f"max_model_len ({self.max_model_len})")
        width = params.beam_width if isinstance(params, BeamSearchParams) else params.best_of
        if width > self.config.max_num_seqs:
            raise ValueError(f"{'beam_width' if isinstance(params, BeamSearchParams) else 'best_of'} ({width}) "
                             f"exceeds max_num_seqs ({self.config.max_num_seqs}): its sequences could never "
                             "run in one batch")
        if width > self.config.max_best_of:
            raise ValueError(f"{'beam_width' if isinstance(params, BeamSearchParams) else 'best_of'} ({width}) "
                             f"exceeds this server's limit of {self.config.max_best_of} sequences per request "
                             "(--max-best-of)")
        per_seq = -(-(max_tokens or self.max_model_len) // self.block_size) + 1
        needed = -(-len(token_ids) // self.block_size) + width * per_seq
        if needed > self.block_manager.device.num_blocks:
            raise ValueError(f"request needs up to {needed} KV blocks but the cache has "
                             f"{self.block_manager.device.num_blocks}; lower n/best_of or max_tokens")

    def abort_request(self, request_id: str) -> RequestOutput | None:
        group = self.requests.pop(request_id, None)
        if group is None:
            return None
        self.scheduler.remove(group)
        for seq in group.seqs:
            if not seq.finished:
                seq.status, seq.finish_reason = SequenceStatus.FINISHED, "abort"
        out = self.processor.make_output(group) or RequestOutput(
            request_id, group.prompt, group.prompt_token_ids,
            [CompletionOutput(0, "", [], None, None, "abort")], True)
        for o in out.outputs:
            o.finish_reason = o.finish_reason or "abort"
        return out

    def set_token_budget(self, num_tokens: int) -> None:
        """Tokens the next steps may run (the shared runtime shrinks prefill chunks while video is
        live); never below the running sequences, which each decode one token per step."""
        if num_tokens < 1:
            raise ValueError(f"token budget must be >= 1, got {num_tokens}")
        self.scheduler.max_num_batched_tokens = num_tokens

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """schedule → run the model → postprocess, handing plain data from one beat to the next.
        A request that fails on its own is removed, its error in `step_errors` until the next step."""
        self.step_errors = {}
        sched = self.scheduler.schedule()
        self.runner.move_blocks(sched.blocks_to_swap_out, sched.blocks_to_swap_in, sched.blocks_to_copy)
        touched, num_generated = {}, 0
        if sched.scheduled:
            batch = build_model_input(sched.scheduled, self.block_size, self.device, self.backend,
                                      self.lora.slots, self.lora.activate(sched.scheduled))
            logits = self.runner.forward(batch)
            touched, num_generated = self.postprocess(batch, logits, self.requests)
            for request_id, error in self.postprocess.failed.items():
                logger.warning("request %s failed in the step and was removed: %r", request_id, error)
                self.abort_request(request_id)
                self.step_errors[request_id] = error
        self.stats_tracker.on_step(sched, num_generated)
        outputs = []
        for group in touched.values():
            out = self.processor.make_output(group)
            if out is not None:
                outputs.append(out)
        for group in self.scheduler.drop_finished():
            self.requests.pop(group.request_id, None)
            self.stats_tracker.on_finish(group)
        return outputs

    # -- LoRA adapters -------------------------------------------------------------------------
    @property
    def loras(self) -> dict[str, LoraAdapter]:
        return self.lora.adapters

    def add_lora(self, name: str, path: str) -> LoraAdapter:
        """Read and check a PEFT adapter folder and serve it as model `name` (safe from another
        thread: the step never waits on the disk). Raises LoraError naming the problem."""
        adapter = self.lora.add(name, path)
        logger.info("LoRA adapter %s loaded from %s: rank %d, %s, %.1f MiB", name, adapter.path, adapter.rank,
                    "/".join(adapter.targets), adapter.nbytes / (1 << 20))
        return adapter

    def remove_lora(self, name: str) -> LoraAdapter:
        """Stop serving `name`; requests already running on it finish with it. Raises LoraNotFound."""
        return self.lora.remove(name)

    # -- stats ---------------------------------------------------------------------------------
    def stats(self, reset_window: bool = False) -> EngineStats:
        return self.stats_tracker.snapshot(self.scheduler, self.block_manager, reset_window, self.speculator)
