"""The device-sharing policy as pure functions of plain inputs: who runs next, and the LLM's token budget.

When both sides have work the device is shared by weighted fair queuing: each side's busy time,
divided by its weight (`video_share` and the rest), advances its virtual clock, and the side that
is behind runs next; a side that had no work starts level with the other, so neither banks
credit while idle nor starves the other. Video frames also have deadlines: a frame that can wait
one more LLM step and still start before the deadline lets the LLM step first. While video
streams are live the LLM step's token budget is held small so prefill chunks stay short.
"""
from __future__ import annotations

from dataclasses import dataclass, field

DIFFUSION, LLM = "diffusion", "llm"


@dataclass(slots=True)
class RuntimePolicy:
    frame_deadline_ms: float = field(default=66.0, metadata={
        "help": "run a diffusion batch before a waiting frame gets this late (default 66 = 15 fps)"})
    video_share: float = field(default=0.4, metadata={
        "help": "share of device time video gets while the LLM also has work"})
    video_llm_token_budget: int = field(default=64, metadata={
        "flag": "--video-llm-tokens", "help": "LLM tokens per step while video streams are live"})
    idle_wait_s: float = 0.05
    stats_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.frame_deadline_ms <= 0:
            raise ValueError(f"frame_deadline_ms must be > 0, got {self.frame_deadline_ms}")
        if not 0 < self.video_share < 1:
            raise ValueError(f"video_share must be in (0, 1), got {self.video_share}")
        if self.video_llm_token_budget < 1:
            raise ValueError(f"video_llm_token_budget must be >= 1, got {self.video_llm_token_budget}")

    def weight(self, side: str) -> float:
        return self.video_share if side == DIFFUSION else 1 - self.video_share


@dataclass(frozen=True, slots=True)
class Clocks:
    """Virtual time per side: busy seconds divided by the side's weight."""

    diffusion: float = 0.0
    llm: float = 0.0


def choose(policy: RuntimePolicy, clocks: Clocks, *, llm_wants: bool, frames_waiting: bool,
           oldest_frame_age_s: float, llm_step_s: float) -> tuple[str | None, Clocks]:
    """The side to run next ('diffusion', 'llm' or None when idle) and the clocks after levelling:
    a side alone advances the idle side's clock to its own, so the idle side cannot bank credit."""
    if not (frames_waiting and llm_wants):
        level = max(clocks.diffusion, clocks.llm)
        clocks = Clocks(diffusion=clocks.diffusion, llm=level) if frames_waiting else \
            Clocks(diffusion=level, llm=clocks.llm)
        return (DIFFUSION if frames_waiting else LLM if llm_wants else None), clocks
    if oldest_frame_age_s + llm_step_s < policy.frame_deadline_ms / 1000:
        return LLM, clocks  # the frame can wait one more LLM step
    return (DIFFUSION if clocks.diffusion <= clocks.llm else LLM), clocks


def charge(policy: RuntimePolicy, clocks: Clocks, side: str, elapsed_s: float) -> Clocks:
    """The clocks after `side` held the device for `elapsed_s`."""
    advance = elapsed_s / policy.weight(side)
    if side == DIFFUSION:
        return Clocks(diffusion=clocks.diffusion + advance, llm=clocks.llm)
    return Clocks(diffusion=clocks.diffusion, llm=clocks.llm + advance)


def token_budget(policy: RuntimePolicy, base_budget: int, video_live: bool, num_running_seqs: int) -> int:
    """The LLM step's token budget: the engine's own, or while video is live the small one (every
    running sequence still decodes each step; only prefill chunks shrink)."""
    if not video_live:
        return base_budget
    return max(min(base_budget, policy.video_llm_token_budget), num_running_seqs, 1)
