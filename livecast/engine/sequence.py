"""Requests and their sequences: the pure-Python state the scheduler and block manager share."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from livecast.engine.sampling_params import BeamSearchParams, SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"


@dataclass(slots=True)
class Sequence:
    """One token stream. `num_computed_tokens` counts tokens whose K/V sit in the cache."""

    seq_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    cumulative_logprob: float = 0.0
    output_logprobs: list[dict[int, float]] = field(default_factory=list)
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    # incremental detokenization state
    text: str = ""
    prefix_offset: int = 0
    read_offset: int = 0
    grammar_matcher: Any = None
    cache_salt: int | None = None  # the LoRA adapter's uid: its KV blocks never match the base's or another's

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int, logprob: float, top_logprobs: dict[int, float] | None) -> None:
        self.token_ids.append(token_id)
        self.cumulative_logprob += logprob
        if top_logprobs is not None:
            self.output_logprobs.append(top_logprobs)

    def fork(self, seq_id: int) -> "Sequence":
        return Sequence(
            seq_id=seq_id, token_ids=list(self.token_ids), num_prompt_tokens=self.num_prompt_tokens,
            status=self.status, num_computed_tokens=self.num_computed_tokens,
            cumulative_logprob=self.cumulative_logprob, output_logprobs=list(self.output_logprobs),
            text=self.text, prefix_offset=self.prefix_offset, read_offset=self.read_offset,
            cache_salt=self.cache_salt,
        )


@dataclass(slots=True)
class SequenceGroup:
    """One request: its prompt, parameters and the sequences sampled from it (n, best_of, beams)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams | BeamSearchParams
    seqs: list[Sequence]
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    prompt_logprobs: list[dict[int, float] | None] | None = None
    generator: Any = None  # torch.Generator when the request is seeded
    # best_of > 1 or beams: sequences fork from the first one once the prompt is computed
    forked: bool = False
    finished_beams: list[tuple[float, Sequence]] = field(default_factory=list)
    num_preemptions: int = 0
    spec: Any = None  # SpecState once the request has speculated
    lora: Any = None  # the engine.lora.LoraAdapter its sequences run with, or None for the base

    @property
    def is_beam(self) -> bool:
        return isinstance(self.params, BeamSearchParams)

    def unfinished_seqs(self) -> list[Sequence]:
        return [s for s in self.seqs if not s.finished]

    @property
    def finished(self) -> bool:
        return all(s.finished for s in self.seqs)
