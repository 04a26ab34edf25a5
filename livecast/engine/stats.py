"""Engine counters, a snapshot object for /metrics and the periodic log line."""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_swapped: int
    num_waiting: int
    kv_cache_usage: float  # fraction of device blocks in use
    cpu_swap_usage: float
    prefix_cache_hit_rate: float
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions_total: int
    num_requests_finished: int
    prompt_throughput: float  # tokens/s since the previous snapshot
    generation_throughput: float
    # speculative decoding, since start (zeros when it is off)
    spec_draft_tokens_total: int = 0
    spec_accepted_tokens_total: int = 0
    spec_verify_steps_total: int = 0

    @property
    def spec_acceptance_rate(self) -> float:
        """Accepted drafts per proposed draft."""
        return self.spec_accepted_tokens_total / self.spec_draft_tokens_total if self.spec_draft_tokens_total else 0.0

    @property
    def spec_mean_accepted_length(self) -> float:
        """Tokens a speculative step emits on average: accepted drafts plus the one sampled token."""
        steps = self.spec_verify_steps_total
        return 1 + self.spec_accepted_tokens_total / steps if steps else 0.0

    def log_line(self) -> str:
        return (f"Avg prompt throughput: {self.prompt_throughput:.1f} tokens/s, "
                f"Avg generation throughput: {self.generation_throughput:.1f} tokens/s, "
                f"Running: {self.num_running} reqs, Swapped: {self.num_swapped} reqs, "
                f"Pending: {self.num_waiting} reqs, KV cache usage: {100 * self.kv_cache_usage:.1f}%, "
                f"CPU swap usage: {100 * self.cpu_swap_usage:.1f}%, "
                f"Prefix cache hit rate: {100 * self.prefix_cache_hit_rate:.1f}%"
                + (f", Spec acceptance: {100 * self.spec_acceptance_rate:.1f}%, "
                   f"mean accepted length: {self.spec_mean_accepted_length:.2f}"
                   if self.spec_verify_steps_total else ""))


@dataclass(slots=True)
class StatsTracker:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: int = 0
    _last_time: float = field(default_factory=time.monotonic)
    _last_prompt: int = 0
    _last_generation: int = 0

    def on_step(self, sched, num_generated: int) -> None:
        self.prompt_tokens += sum(s.num_new_tokens for s in sched.scheduled if s.prefill)
        self.generation_tokens += num_generated

    def on_finish(self, group) -> None:
        self.finished += 1

    def snapshot(self, scheduler, block_manager, reset_window: bool = False, speculator=None) -> EngineStats:
        """Throughputs cover the window since the last reset (the periodic log line resets it;
        metrics scrapes only read)."""
        now = time.monotonic()
        elapsed = max(now - self._last_time, 1e-9)
        prompt_rate = (self.prompt_tokens - self._last_prompt) / elapsed
        gen_rate = (self.generation_tokens - self._last_generation) / elapsed
        if reset_window:
            self._last_time, self._last_prompt, self._last_generation = now, self.prompt_tokens, self.generation_tokens
        queries = block_manager.prefix_queries
        return EngineStats(
            num_running=len(scheduler.running), num_swapped=len(scheduler.swapped),
            num_waiting=len(scheduler.waiting), kv_cache_usage=block_manager.usage,
            cpu_swap_usage=block_manager.cpu_usage,
            prefix_cache_hit_rate=block_manager.prefix_hits / queries if queries else 0.0,
            prompt_tokens_total=self.prompt_tokens, generation_tokens_total=self.generation_tokens,
            num_preemptions_total=scheduler.num_preemptions, num_requests_finished=self.finished,
            prompt_throughput=prompt_rate, generation_throughput=gen_rate,
            spec_draft_tokens_total=speculator.num_draft_tokens if speculator else 0,
            spec_accepted_tokens_total=speculator.num_accepted_tokens if speculator else 0,
            spec_verify_steps_total=speculator.num_verify_steps if speculator else 0)
