"""The request-level `cot` field: `{"mode", "demos", "n", "answer_format"}`, parsed and validated.

    mode           "zero_shot" | "few_shot" | "auto" | "self_consistency" (and "none", the
                   direct-answer baseline the benchmark compares against)
    demos          a demo-set name loaded with `--cot-demos NAME=PATH`, or a list of
                   {question, rationale, answer}; required by few_shot and auto; optional for
                   self_consistency (with demos its chains are few-shot, without zero-shot)
    n              chains sampled by self_consistency, 1..MAX_CHAINS (default 5); 1 elsewhere
    answer_format  "number" (default) | "choice" | "text"

Errors are `CotError`, a ValueError carrying `param` ("cot.n", …) for the OpenAI error shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from livecast.services.llm.cot.answers import ANSWER_FORMATS
from livecast.services.llm.cot.demos import Demo, DemoSet, parse_demos

MODES = ("none", "zero_shot", "few_shot", "auto", "self_consistency")
MAX_CHAINS = 64
DEFAULT_CHAINS = 5


class CotError(ValueError):
    """A bad `cot` field; `param` names the offending field for the API error."""

    def __init__(self, message: str, param: str = "cot") -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class CotSpec:
    mode: str
    demos: str | list[Demo] | None = None
    n: int | None = None
    answer_format: str = "number"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CotError(f"cot.mode must be one of {', '.join(MODES[1:])}; got {self.mode!r}", "cot.mode")
        if self.answer_format not in ANSWER_FORMATS:
            raise CotError(f"cot.answer_format must be one of {', '.join(ANSWER_FORMATS)}; "
                           f"got {self.answer_format!r}", "cot.answer_format")
        if self.n is None:
            self.n = DEFAULT_CHAINS if self.mode == "self_consistency" else 1
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise CotError(f"cot.n must be an integer, got {self.n!r}", "cot.n")
        if self.mode == "self_consistency":
            if not 1 <= self.n <= MAX_CHAINS:
                raise CotError(f"cot.n must be in [1, {MAX_CHAINS}] for self_consistency, got {self.n}", "cot.n")
        elif self.n != 1:
            raise CotError(f"cot.n applies only to mode self_consistency (got n={self.n} with mode "
                           f"{self.mode!r})", "cot.n")
        if self.mode in ("few_shot", "auto") and not self.demos:
            raise CotError(f"cot.demos is required for mode {self.mode!r}: a demo set name or a list "
                           "of {question, rationale, answer}", "cot.demos")
        if self.mode in ("none", "zero_shot") and self.demos:
            raise CotError(f"cot.demos is not used by mode {self.mode!r}; use few_shot or auto", "cot.demos")
        if self.demos is not None and not isinstance(self.demos, (str, list)):
            raise CotError("cot.demos must be a demo set name or a list of demos", "cot.demos")

    @classmethod
    def from_request(cls, value: Any) -> "CotSpec":
        """Parse the JSON `cot` object of a request."""
        if not isinstance(value, dict):
            raise CotError(f"cot must be an object with a 'mode', got {type(value).__name__}")
        unknown = sorted(set(value) - {"mode", "demos", "n", "answer_format"})
        if unknown:
            raise CotError(f"cot has unknown field(s) {', '.join(unknown)}; expected mode, demos, n, "
                           "answer_format", f"cot.{unknown[0]}")
        if "mode" not in value:
            raise CotError("cot.mode is required", "cot.mode")
        demos = value.get("demos")
        if isinstance(demos, list):
            try:
                demos = parse_demos(demos, "cot.demos")
            except ValueError as exc:
                raise CotError(str(exc), "cot.demos") from None
        return cls(value["mode"], demos, value.get("n"), value.get("answer_format", "number"))

    def resolve_demos(self, sets: dict[str, DemoSet]) -> list[Demo]:
        """The demos to prompt with: inline ones, or the named set from `--cot-demos`."""
        if self.demos is None:
            return []
        if isinstance(self.demos, list):
            return list(self.demos)
        if self.demos not in sets:
            known = ", ".join(sorted(sets)) or "none are loaded; start the server with --cot-demos NAME=PATH"
            raise CotError(f"cot.demos: unknown demo set {self.demos!r} (known: {known})", "cot.demos")
        return sets[self.demos].demos
