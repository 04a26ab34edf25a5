"""Per-request sampling parameters (vLLM's names and semantics)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_INT32 = (1 << 31) - 1  # token ids, top_k and counts live in int32/int64 tensors in the step


@dataclass(slots=True)
class SamplingParams:
    """How to sample one request. Invalid values raise ValueError naming the parameter.

    `temperature=0` is greedy. `top_k` of 0 or -1 disables top-k. `seed` makes a request's
    samples reproducible whatever else shares its batch. `stop` strings are excluded from the
    returned text. `logprobs=k` returns the top-k log-probabilities of every generated position
    (plus the sampled token's); `prompt_logprobs=k` does the same for the prompt.

    `logit_bias` maps token ids to a bias in [-100, 100] added to their logits before sampling
    (OpenAI's semantics: -100 bans a token, 100 all but forces it).

    Every number is range-checked here, so nothing a client sends can overflow a tensor inside
    the batched step (where a failure would otherwise hit every request in the batch).

    `grammar` is a factory returning a fresh matcher per generated sequence, with xgrammar's
    GrammarMatcher interface (`fill_next_token_bitmask(bitmask, index)`, `accept_token(id)`,
    `is_terminated()`); its bitmask is applied to the logits inside the batched step.
    """

    n: int = 1
    best_of: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = None
    grammar: Callable[[], Any] | None = field(default=None, repr=False)
    speculative: bool = True  # False: never speculate for this request (when the engine does)
    lora: str | None = None  # a loaded LoRA adapter's name (the engine resolves it); None: the base model

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.best_of is None:
            self.best_of = self.n
        if self.top_k == -1:
            self.top_k = 0
        self._validate()

    def _validate(self) -> None:
        _check(_int_in(self.n, 1, MAX_INT32), "n", f"must be an integer >= 1, got {self.n!r}")
        _check(_int_in(self.best_of, self.n, MAX_INT32), "best_of",
               f"must be an integer >= n ({self.n}), got {self.best_of!r}")
        for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and math.isfinite(value), name,
                   f"must be a finite number, got {value!r}")
        _check(self.temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(_int_in(self.top_k, 0, MAX_INT32), "top_k",
               f"must be -1 (disabled) or a positive integer below 2**31, got {self.top_k}")
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty",
               f"must be in [-2, 2], got {self.presence_penalty}")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty",
               f"must be in [-2, 2], got {self.frequency_penalty}")
        _check(self.repetition_penalty > 0.0, "repetition_penalty",
               f"must be > 0, got {self.repetition_penalty}")
        _check(self.max_tokens is None or _int_in(self.max_tokens, 1, MAX_INT32),
               "max_tokens", f"must be at least 1, got {self.max_tokens}")
        _check(_int_in(self.min_tokens, 0, MAX_INT32), "min_tokens", f"must be >= 0, got {self.min_tokens}")
        _check(self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
               f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        _check(self.logprobs is None or (isinstance(self.logprobs, int) and 0 <= self.logprobs <= 20),
               "logprobs", f"must be an integer in [0, 20], got {self.logprobs}")
        _check(self.prompt_logprobs is None or (isinstance(self.prompt_logprobs, int) and 0 <= self.prompt_logprobs <= 20),
               "prompt_logprobs", f"must be an integer in [0, 20], got {self.prompt_logprobs}")
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "stop strings must be non-empty strings")
        _check(self.seed is None or _int_in(self.seed, 0, (1 << 64) - 1), "seed",
               f"must be an integer in [0, 2**64), got {self.seed!r}")
        _check(all(_int_in(t, 0, MAX_INT32) for t in self.stop_token_ids), "stop_token_ids",
               f"must be token ids in [0, 2**31), got {self.stop_token_ids!r}")
        if self.logit_bias is not None:
            _check(isinstance(self.logit_bias, dict) and all(
                _int_in(t, 0, MAX_INT32) and isinstance(b, (int, float)) and -100 <= b <= 100
                for t, b in self.logit_bias.items()), "logit_bias",
                "must map token ids in [0, 2**31) to biases in [-100, 100]")
        _check(isinstance(self.speculative, bool), "speculative", f"must be a boolean, got {self.speculative!r}")
        if self.temperature == 0.0:
            _check(self.best_of == 1 or self.n == self.best_of, "best_of",
                   "must equal n with greedy sampling (temperature=0)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def max_stop_len(self) -> int:
        return max((len(s) for s in self.stop), default=0)


@dataclass(slots=True)
class BeamSearchParams:
    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    length_penalty: float = 1.0
    lora: str | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.beam_width, int) and self.beam_width >= 1, "beam_width",
               f"must be an integer >= 1, got {self.beam_width!r}")
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens",
               f"must be at least 1, got {self.max_tokens}")


def _int_in(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name} {message}")
