"""Self-consistency (Wang et al. 2022) on the paged engine: N chains, one prompt, shared KV blocks.

One request with `SamplingParams(n=N)` prefills the prompt once; the engine then forks the
sequence N ways and every chain's block table points at the same prompt blocks (copy-on-write:
only the partly filled last prompt block is copied when a chain first writes into it). N separate
requests would each hold their own copy of the prompt. `measure_kv_sharing` runs both on a real
engine and reads the peak number of referenced blocks from its block manager.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, replace

from livecast.engine.llm_engine import LLMEngine
from livecast.engine.request_output import RequestOutput
from livecast.engine.sampling_params import SamplingParams

_ids = itertools.count()


@dataclass(slots=True)
class KvSharing:
    num_chains: int
    prompt_tokens: int
    block_size: int
    shared_blocks: int  # peak KV blocks referenced by one request with n chains
    separate_blocks: int  # peak KV blocks of n one-chain requests, nothing shared

    @property
    def saved_blocks(self) -> int:
        return self.separate_blocks - self.shared_blocks

    @property
    def saved_pct(self) -> float:
        return 100.0 * self.saved_blocks / max(self.separate_blocks, 1)

    def as_dict(self) -> dict:
        return {"num_chains": self.num_chains, "prompt_tokens": self.prompt_tokens, "block_size": self.block_size,
                "shared_blocks": self.shared_blocks, "separate_blocks": self.separate_blocks,
                "saved_blocks": self.saved_blocks, "saved_pct": round(self.saved_pct, 2)}


def run_to_completion(engine: LLMEngine, requests: list[tuple[str | list[int], SamplingParams]]
                      ) -> tuple[list[RequestOutput], int]:
    """Run `requests` together on an idle engine; (outputs in order, peak referenced blocks).

    Cached blocks nobody references count as free (the allocator can evict them), so the peak is
    the KV memory these requests actually held."""
    if engine.has_unfinished_requests():
        raise RuntimeError("the engine must be idle to measure KV blocks")
    ids = [f"sc-{next(_ids)}" for _ in requests]
    for request_id, (prompt, params) in zip(ids, requests):
        engine.add_request(request_id, prompt, params)
    done: dict[str, RequestOutput] = {}
    peak = engine.block_manager.device.num_used
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        peak = max(peak, engine.block_manager.device.num_used)
    return [done[i] for i in ids], peak


@contextlib.contextmanager
def _prefix_cache_off(engine: LLMEngine):
    # separate requests must not find each other's prompt blocks either, or the baseline would
    # be the prefix cache's saving instead of "no sharing"
    allocator = engine.block_manager.device
    was = allocator.enable_caching
    allocator.enable_caching = False
    try:
        yield
    finally:
        allocator.enable_caching = was


def measure_kv_sharing(engine: LLMEngine, prompt: str | list[int], params: SamplingParams
                       ) -> tuple[RequestOutput, KvSharing]:
    """The n-chain request (its output is returned) and the same work as n separate requests
    (seeds `seed`, `seed + 1`, … when seeded), each measured on its own from the block manager."""
    if params.n < 2:
        raise ValueError(f"measuring KV sharing needs n >= 2 chains, got n={params.n}")
    (shared_out,), shared_peak = run_to_completion(engine, [(prompt, params)])
    singles = [replace(params, n=1, best_of=1, seed=None if params.seed is None else params.seed + i)
               for i in range(params.n)]
    with _prefix_cache_off(engine):
        _, separate_peak = run_to_completion(engine, [(prompt, p) for p in singles])
    report = KvSharing(params.n, len(shared_out.prompt_token_ids), engine.block_size, shared_peak, separate_peak)
    return shared_out, report

