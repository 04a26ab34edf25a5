"""The shared device runtime: one thread owns the device and runs both engines, never both at once.

vLLM and StreamDiffusion each assume the device is theirs. Here a single executor alternates
between diffusion batches (frames of every live video stream in one UNet call) and LLM engine
steps. When both sides have work the device is shared by weighted fair queuing: each side's busy
time, divided by its weight (`video_share` and the rest), advances its virtual clock, and the
side that is behind runs next; a side that had no work starts level with the other, so neither
banks credit while idle nor starves the other. Video frames also have deadlines: a stream that
has waited so long that one more LLM step would make it late is due; a frame that is not due yet
lets the LLM step first. While video streams are live the LLM step's token budget is held small
so prefill chunks stay short. Frames wait in the batcher latest-wins, so a busy device lowers
the video frame rate, not the freshness of the frames that come out.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

logger = logging.getLogger("livecast.runtime")


@dataclass(slots=True)
class RuntimePolicy:
    frame_deadline_ms: float = 66.0  # a frame should start processing within one 15 fps interval
    video_share: float = 0.4  # device time video gets while the LLM also has work
    video_llm_token_budget: int = 64  # LLM tokens per step while video streams are live
    idle_wait_s: float = 0.05
    stats_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.frame_deadline_ms <= 0:
            raise ValueError(f"frame_deadline_ms must be > 0, got {self.frame_deadline_ms}")
        if not 0 < self.video_share < 1:
            raise ValueError(f"video_share must be in (0, 1), got {self.video_share}")
        if self.video_llm_token_budget < 1:
            raise ValueError(f"video_llm_token_budget must be >= 1, got {self.video_llm_token_budget}")


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
    def __init__(self, llm=None, batcher=None, policy: RuntimePolicy | None = None) -> None:
        """`llm`: an AsyncLLMEngine (its loop is taken over); `batcher`: a StreamBatcher."""
        self.llm, self.batcher = llm, batcher
        self.policy = policy or RuntimePolicy()
        self.stats = RuntimeStats()
        self._llm_step = _Ema()
        self._diffusion_step = _Ema()
        self._clock = {"diffusion": 0.0, "llm": 0.0}  # virtual time: busy seconds / the side's weight
        self._wakeup = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_log = time.monotonic()
        self._logged = (0, 0.0, 0.0)  # frames, diffusion busy, LLM busy at the last log line
        self._base_token_budget = None
        if llm is not None:
            llm.attach_driver(self.notify)
            self._base_token_budget = llm.engine.scheduler.max_num_batched_tokens

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="device-runtime", daemon=True)
            self._thread.start()

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Abort LLM requests (their streams end with 'abort'), let the loop apply that, then stop."""
        if self.llm is not None:
            self.llm.abort_all()
        deadline = time.monotonic() + drain_timeout_s
        while self.llm is not None and self.llm.has_work() and self._thread and time.monotonic() < deadline:
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
                worked = self.run_once()
            except Exception:  # a failed batch fails its own frames/requests, never the device loop
                logger.exception("device runtime: step failed")
                worked = True
            if not worked:
                self._wakeup.wait(self.policy.idle_wait_s)
                self._wakeup.clear()
            self._maybe_log()

    def choose(self) -> str | None:
        """'diffusion', 'llm' or None (idle): the scheduling policy (it only levels idle clocks)."""
        llm_wants = self.llm is not None and self.llm.has_work()
        frames = self.batcher is not None and self.batcher.num_pending() > 0
        clock = self._clock
        if not (frames and llm_wants):  # one side alone: it starts level when the other wakes
            idle = "llm" if frames else "diffusion"
            clock[idle] = max(clock["llm"], clock["diffusion"])
            return "diffusion" if frames else "llm" if llm_wants else None
        deadline_s = self.policy.frame_deadline_ms / 1000
        if self.batcher.oldest_pending_age_s() + self._llm_step.value < deadline_s:
            return "llm"  # the frame can wait one more LLM step
        return "diffusion" if clock["diffusion"] <= clock["llm"] else "llm"

    def run_once(self) -> bool:
        self._apply_token_budget()
        choice = self.choose()
        if choice == "diffusion":
            elapsed = self._run_diffusion()
        elif choice == "llm":
            start = time.perf_counter()
            self.llm.run_once()
            elapsed = time.perf_counter() - start
            self._llm_step.update(elapsed)
            self.stats.llm_steps += 1
            self.stats.llm_busy_s += elapsed
        else:
            return False
        weight = self.policy.video_share if choice == "diffusion" else 1 - self.policy.video_share
        self._clock[choice] += elapsed / weight
        return True

    def _run_diffusion(self) -> float:
        wait_s = self.batcher.oldest_pending_age_s()
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

    def _apply_token_budget(self) -> None:
        if self.llm is None:
            return
        scheduler = self.llm.engine.scheduler
        video_live = self.batcher is not None and bool(self.batcher.stream_ids())
        budget = self._base_token_budget
        if video_live:
            # every running sequence still decodes each step; only prefill chunks shrink
            budget = max(min(budget, self.policy.video_llm_token_budget), scheduler.num_running_seqs(), 1)
        scheduler.max_num_batched_tokens = budget

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
        if self.batcher is None or not self.batcher.stream_ids():
            return
        snap = self.snapshot()
        frames, diff_busy, llm_busy = (snap["diffusion_frames"] - self._logged[0],
                                       snap["diffusion_busy_s"] - self._logged[1], snap["llm_busy_s"] - self._logged[2])
        self._logged = (snap["diffusion_frames"], snap["diffusion_busy_s"], snap["llm_busy_s"])
        logger.info("Video: %d streams, %.1f frames/s, batch %.0f ms, frame wait p95 %.0f ms, "
                    "deadline misses %d, device share diffusion %.0f%% / LLM %.0f%%",
                    len(self.batcher.stream_ids()), frames / elapsed, snap["diffusion_batch_ms"],
                    snap["frame_wait_p95_ms"], snap["deadline_misses"], 100 * diff_busy / elapsed,
                    100 * llm_busy / elapsed)


def plan_kv_cache_bytes(device: str, memory_budget: int, diffusion_bytes: int, llm_weight_bytes: int,
                        default_cap: int = 2 << 30) -> int:
    """KV cache size on a CPU host from one memory budget shared by both engines: what is left
    after the diffusion models (weights and activations) and the LLM weights, capped at
    `default_cap`. On CUDA the engine measures free device memory after the diffusion side is
    built and warmed up, so only CPU hosts need this plan."""
    left = memory_budget - diffusion_bytes - llm_weight_bytes
    if left <= 0:
        raise ValueError(f"memory budget {memory_budget / 2**30:.2f} GiB leaves nothing for the KV cache after "
                         f"diffusion ({diffusion_bytes / 2**30:.2f} GiB) and LLM weights "
                         f"({llm_weight_bytes / 2**30:.2f} GiB); raise --memory-budget or set --kv-cache-memory")
    kv = min(left, default_cap)
    logger.info("memory plan (%s): budget %.2f GiB = diffusion %.2f + LLM weights %.2f + KV cache %.2f GiB "
                "(%.2f GiB unassigned)", device, memory_budget / 2**30, diffusion_bytes / 2**30,
                llm_weight_bytes / 2**30, kv / 2**30, (left - kv) / 2**30)
    return kv
