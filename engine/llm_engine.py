"""The engine step: schedule → run model → postprocess. Single-threaded; AsyncLLMEngine wraps it."""
from __future__ import annotations

import itertools
import logging
import time

import torch

from engine.block_manager import BlockManager
from engine.config import EngineConfig
from engine.model_input import build_model_input
from engine.model_loader import eos_token_ids, iter_weights, load_config, load_tokenizer, resolve_model
from engine.model_runner import ModelRunner
from engine.models.llama import LlamaForCausalLM
from engine.output_processor import OutputProcessor
from engine.outputs import CompletionOutput, RequestOutput
from engine.sampler import SamplingRow, sample
from engine.sampling_params import BeamSearchParams, SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig, ScheduledSeq
from engine.sequence import Sequence, SequenceGroup, SequenceStatus
from engine.stats import EngineStats, StatsTracker

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
        self.model = self._load_model(max_len)

        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        block_bytes = ModelRunner.bytes_per_block(hf.num_hidden_layers, hf.num_key_value_heads, head_dim,
                                                  config.block_size, self.dtype)
        num_blocks = self._kv_budget() // block_bytes
        if num_blocks < 2:
            raise ValueError(f"KV cache budget {self._kv_budget()} bytes holds fewer than 2 blocks "
                             f"of {block_bytes} bytes; raise kv_cache_memory")
        num_cpu_blocks = int(config.swap_space * (1 << 30)) // block_bytes
        self.block_size = config.block_size
        self.max_model_len = min(max_len, num_blocks * config.block_size)
        self.use_triton = config.use_triton()
        self.runner = ModelRunner(self.model, hf.num_hidden_layers, hf.num_key_value_heads, head_dim,
                                  num_blocks, num_cpu_blocks, config.block_size, self.dtype, self.device,
                                  self.use_triton)
        self.block_manager = BlockManager(num_blocks, config.block_size, num_cpu_blocks,
                                          config.enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens,
                                                   config.preemption_mode), self.block_manager)
        self._seq_ids = itertools.count()
        self.processor = OutputProcessor(self.tokenizer, self.block_manager, self.eos_token_ids,
                                         self.max_model_len, lambda: next(self._seq_ids), config.jump_forward)
        self.requests: dict[str, SequenceGroup] = {}
        self.stats_tracker = StatsTracker()
        logger.info("model %s (%s, %s, %s) · KV cache: %d blocks x %d tokens = %d tokens (%.2f GiB) · "
                    "CPU swap: %d blocks (%.2f GiB) · max_model_len %d · attention: %s",
                    self.model_name, hf.architectures[0], self.dtype, self.device, num_blocks, config.block_size,
                    num_blocks * config.block_size, num_blocks * block_bytes / (1 << 30), num_cpu_blocks,
                    num_cpu_blocks * block_bytes / (1 << 30), self.max_model_len,
                    "triton" if self.use_triton else "torch")

    def _load_model(self, max_positions: int) -> LlamaForCausalLM:
        with torch.device("meta"):
            model = LlamaForCausalLM(self.hf_config, max_positions, self.config.use_triton())
        model = model.to_empty(device="cpu")
        model.load_weights(iter_weights(self.model_path))
        return model.to(device=self.device, dtype=self.dtype).eval()

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
        seq = Sequence(next(self._seq_ids), list(token_ids), len(token_ids))
        self.processor.detokenizer.start(seq)
        group = SequenceGroup(request_id, text, token_ids, params, [seq],
                              arrival_time=arrival_time or time.monotonic())
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
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt is {len(token_ids)} tokens, but max_model_len is {self.max_model_len} "
                             "(the prompt must leave room for at least one generated token)")
        max_tokens = params.max_tokens
        if max_tokens is not None and len(token_ids) + max_tokens > self.max_model_len:
            raise ValueError(f"max_tokens ({max_tokens}) + prompt ({len(token_ids)} tokens) exceeds "
                             f"max_model_len ({self.max_model_len})")
        width = params.beam_width if isinstance(params, BeamSearchParams) else params.best_of
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

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    # -- the step ------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        self.runner.move_blocks(sched.blocks_to_swap_out, sched.blocks_to_swap_in, sched.blocks_to_copy)
        touched: dict[str, SequenceGroup] = {}
        if sched.scheduled:
            batch = build_model_input(sched.scheduled, self.block_manager.block_tables, self.block_size,
                                      self.device, self.use_triton, self._prompt_logprob_range)
            logits = self.runner.forward(batch)
            num_generated = self._postprocess(batch, logits, touched)
        else:
            num_generated = 0
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

    def _prompt_logprob_range(self, item: ScheduledSeq) -> tuple[int, int] | None:
        """Positions [first, last) of this chunk whose logits score prompt tokens that still lack
        logprobs (position p scores prompt token p + 1; a recompute skips what it already has)."""
        group = item.group
        if group.is_beam or group.params.prompt_logprobs is None:
            return None
        done = len(group.prompt_logprobs or [None])  # entry 0 is None: nothing scores token 0
        c, n = item.seq.num_computed_tokens, item.num_new_tokens
        first, last = max(c, done - 1), min(c + n, len(group.prompt_token_ids) - 1)
        return (first, last) if first < last else None

    def _postprocess(self, batch, logits: torch.Tensor, touched: dict[str, SequenceGroup]) -> int:
        """Advance every scheduled sequence and append sampled tokens; returns tokens generated."""
        self._record_prompt_logprobs(batch, logits)
        rows, items, beam_rows = [], [], {}
        for item, row in zip(batch.scheduled, batch.sample_rows):
            item.seq.num_computed_tokens += item.num_new_tokens
            self.block_manager.mark_computed(item.seq)
            if row < 0:
                continue
            group = item.group
            touched[group.request_id] = group
            if group.is_beam:
                beam_rows.setdefault(group.request_id, (group, []))[1].append((item.seq, row))
                continue
            repeat = 1 if group.forked or group.params.best_of == 1 else group.params.best_of
            for _ in range(repeat):
                rows.append(row)
                items.append(item)
        if rows:
            self._sample(logits, rows, items)
        for group, seq_rows in beam_rows.values():
            logprobs = torch.log_softmax(logits[[r for _, r in seq_rows]], dim=-1)
            self.processor.beam_step(group, [s for s, _ in seq_rows], logprobs)
        return len(rows) + sum(group.params.beam_width for group, _ in beam_rows.values())

    def _sample(self, logits: torch.Tensor, rows: list[int], items: list[ScheduledSeq]) -> None:
        sampling_rows = []
        for item in items:
            params, seq = item.group.params, item.seq
            banned = [] if seq.num_output_tokens >= params.min_tokens else \
                sorted(self.eos_token_ids | set(params.stop_token_ids))
            # rows repeated for a fork all start from the prompt, so the parent's matcher masks them
            sampling_rows.append(SamplingRow(params, seq.token_ids, seq.num_prompt_tokens, item.group.generator,
                                             banned, seq.grammar_matcher))
        out = sample(logits[rows], sampling_rows)
        i = 0
        while i < len(items):
            item = items[i]
            group = item.group
            count = 1
            while i + count < len(items) and items[i + count] is item:
                count += 1
            seqs = [item.seq] if count == 1 else self.processor.fork(group, item.seq, count)
            if count == 1 and not group.forked:
                group.forked = True
            for j, seq in enumerate(seqs):
                k = i + j
                self.processor.append(group, seq, out.token_ids[k], out.logprobs[k], out.top_logprobs[k])
            i += count

    def _record_prompt_logprobs(self, batch, logits: torch.Tensor) -> None:
        for item, rows in zip(batch.scheduled, batch.prompt_logprob_rows):
            if rows is None:
                continue
            group, (first_row, count) = item.group, rows
            k = group.params.prompt_logprobs
            logprobs = torch.log_softmax(logits[first_row:first_row + count], dim=-1)
            if group.prompt_logprobs is None:
                group.prompt_logprobs = [None]
            start = len(group.prompt_logprobs)
            targets = torch.tensor(group.prompt_token_ids[start:start + count])
            chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
            top_vals, top_ids = logprobs.topk(max(k, 1), dim=-1)
            for j, target in enumerate(targets.tolist()):
                entry = {target: chosen[j]}
                entry.update({t: v for t, v in zip(top_ids[j, :k].tolist(), top_vals[j, :k].tolist())
                              if t not in entry})
                group.prompt_logprobs.append(entry)

    # -- stats ---------------------------------------------------------------------------------
    def stats(self, reset_window: bool = False) -> EngineStats:
        return self.stats_tracker.snapshot(self.scheduler, self.block_manager, reset_window)
