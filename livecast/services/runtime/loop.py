"""The shared device runtime: one thread owns the device and steps every engine, never two at once.

vLLM and StreamDiffusion each assume the device is theirs. Here a single loop alternates between
diffusion batches (frames of every live video stream in one UNet call) and LLM engine steps, as
`services.runtime.policy` decides from plain inputs. Every engine it drives is a
`livecast.driven.Driven`, and this loop calls only its four methods: `set_notify(fn)` (called
when work arrives, so the idle loop wakes), `load()` (plain data: waiting, oldest wait, active
units, step token budget), `step(token_budget)` and `cancel_all()`. Frames wait in the batcher latest-wins, so a busy device lowers the video frame
rate, not the freshness of the frames that come out. Other device work (embedding batches) is
stepped on the LLM side's share.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from livecast.driven import IDLE
from livecast.services.runtime.policy import (
    DIFFUSION,
    LLM,
    Clocks,
    RuntimePolicy,
    charge,
    choose,
    token_budget,
)

logger = logging.getLogger("livecast.runtime")


@dataclass(slots=True)
class _Ema:
    value: float = 0.0
    weight: float = 0.2

    def update(self, sample: float) -> None:
        self.value = sample if self.value == 0.0 else self.value + self.weight * (sample - self.value)


@dataclass(slots=True)
class RuntimeStats:
    diffusion_batches: int = 0
    diffusion_frames: int = 0
    llm_steps: int = 0
    deadline_misses: int = 0  # batches whose oldest frame had waited past the deadline
    diffusion_busy_s: float = 0.0
    llm_busy_s: float = 0.0
    frame_wait_ms: deque = field(default_factory=lambda: deque(maxlen=512))  # oldest-frame wait per batch


class DeviceRuntime:
    def __init__(self, llm=None, batcher=None, policy: RuntimePolicy | None = None, others=()) -> None:
        """`llm`: an AsyncLLMEngine; `batcher`: a StreamBatcher; `others`: more device work stepped
        on the LLM's share (embedding batches). Each is driven by this loop from construction on."""
        self.llm, self.batcher, self.others = llm, batcher, tuple(others)
        self.policy = policy or RuntimePolicy()
        self.stats = RuntimeStats()
        self.clocks = Clocks()
        self._llm_step = _Ema()
        self._diffusion_step = _Ema()
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_log = time.monotonic()
        self._logged = (0, 0.0, 0.0)  # frames, diffusion busy, LLM busy at the last log line
        for work in self._works():
            work.set_notify(self.notify)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="device-runtime", daemon=True)
            self._thread.start()

    def _works(self) -> list:
        return [w for w in (self.llm, self.batcher, *self.others) if w is not None]

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Cancel all work (LLM streams end with 'abort', waiting frames and embeddings fail),
        let the loop apply that, then stop."""
        for work in self._works():
            work.cancel_all()
        deadline = time.monotonic() + drain_timeout_s
        while self._thread and any(w.load().waiting for w in self._works()) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._stop.set()
        self._wakeup.set()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
            self._thread = None

    def notify(self) -> None:
        self._wakeup.set()

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.step()
            except Exception:  # a failed batch fails its own frames/requests, never the device loop
                logger.exception("device runtime: step failed")
                worked = True
            if not worked:
                self._wakeup.wait(self.policy.idle_wait_s)
                self._wakeup.clear()
            self._maybe_log()

    def step(self) -> bool:
        """Run one unit of device work as the policy chooses; False when nothing wanted the device."""
        llm = self.llm.load() if self.llm is not None else IDLE
        video = self.batcher.load() if self.batcher is not None else IDLE
        other = next((w for w in self.others if w.load().waiting), None)
        choice, self.clocks = choose(
            self.policy, self.clocks, llm_wants=other is not None or llm.waiting,
            frames_waiting=video.waiting, oldest_frame_age_s=video.oldest_wait_s, llm_step_s=self._llm_step.value)
        if choice == DIFFUSION:
            elapsed = self._run_diffusion(video.oldest_wait_s)
        elif choice == LLM:
            start = time.perf_counter()
            if other is not None:
                other.step()
            else:
                self.llm.step(token_budget(self.policy, llm.max_step_tokens, video.active > 0, llm.active))
                self.stats.llm_steps += 1
            elapsed = time.perf_counter() - start
            if other is None:
                self._llm_step.update(elapsed)
            self.stats.llm_busy_s += elapsed
        else:
            return False
        self.clocks = charge(self.policy, self.clocks, choice, elapsed)
        return True

    def _run_diffusion(self, wait_s: float) -> float:
        start = time.perf_counter()
        frames = self.batcher.step()
        elapsed = time.perf_counter() - start
        self._diffusion_step.update(elapsed)
        stats = self.stats
        stats.diffusion_batches += 1
        stats.diffusion_frames += frames
        stats.diffusion_busy_s += elapsed
        stats.frame_wait_ms.append(wait_s * 1000)
        if wait_s * 1000 > self.policy.frame_deadline_ms:
            stats.deadline_misses += 1
        return elapsed

    # -- reporting ---------------------------------------------------------------------------
    def health(self) -> dict:
        """The policy and the counters, for /health."""
        p = self.policy
        return {"running": self._thread is not None and self._thread.is_alive(),
                "policy": {"video_share": p.video_share, "frame_deadline_ms": p.frame_deadline_ms,
                           "video_llm_token_budget": p.video_llm_token_budget},
                **self.snapshot()}

    def snapshot(self) -> dict:
        s = self.stats
        waits = sorted(s.frame_wait_ms)
        p95 = waits[int(0.95 * (len(waits) - 1))] if waits else 0.0
        return {"diffusion_batches": s.diffusion_batches, "diffusion_frames": s.diffusion_frames,
                "llm_steps": s.llm_steps, "deadline_misses": s.deadline_misses,
                "diffusion_busy_s": s.diffusion_busy_s, "llm_busy_s": s.llm_busy_s,
                "frame_wait_p95_ms": p95, "llm_step_ms": 1000 * self._llm_step.value,
                "diffusion_batch_ms": 1000 * self._diffusion_step.value}

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self.policy.stats_interval_s:
            return
        elapsed, self._last_log = now - self._last_log, now
        streams = self.batcher.load().active if self.batcher is not None else 0
        if not streams:
            return
        snap = self.snapshot()
        frames, diff_busy, llm_busy = (snap["diffusion_frames"] - self._logged[0],
                                       snap["diffusion_busy_s"] - self._logged[1], snap["llm_busy_s"] - self._logged[2])
        self._logged = (snap["diffusion_frames"], snap["diffusion_busy_s"], snap["llm_busy_s"])
        logger.info("Video: %d streams, %.1f frames/s, batch %.0f ms, frame wait p95 %.0f ms, "
                    "deadline misses %d, device share diffusion %.0f%% / LLM %.0f%%",
                    streams, frames / elapsed, snap["diffusion_batch_ms"],
                    snap["frame_wait_p95_ms"], snap["deadline_misses"], 100 * diff_busy / elapsed,
                    100 * llm_busy / elapsed)


