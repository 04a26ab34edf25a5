"""Frame flow shared by the live routes (WebRTC, WebSocket frames): a depth-1 latest-frame slot and
per-client rates and latencies."""
from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import numpy as np


class LatestSlot:
    """Depth-1 hand-over between a reader and one worker: `put` replaces what is waiting (and
    returns True when it did), so a slow worker never builds a backlog; the latest frame wins."""

    def __init__(self) -> None:
        self._item: Any = None
        self._ready = asyncio.Event()

    def put(self, item: Any) -> bool:
        replaced = self._ready.is_set()
        self._item = item
        self._ready.set()
        return replaced

    def peek(self) -> Any:
        return self._item if self._ready.is_set() else None

    async def get(self) -> Any:
        await self._ready.wait()
        self._ready.clear()
        item, self._item = self._item, None
        return item


class FrameStats:
    """Counters plus a window of recent processing latencies; rates are computed per `tick()`."""

    def __init__(self, window: int = 120) -> None:
        self.frames_in = self.frames_out = self.dropped = 0
        self.latencies_ms: deque[float] = deque(maxlen=window)
        self.input_fps = self.output_fps = 0.0
        self._last = (time.monotonic(), 0, 0)

    def frame_done(self, started: float) -> float:
        latency_ms = (time.monotonic() - started) * 1000
        self.frames_out += 1
        self.latencies_ms.append(latency_ms)
        return latency_ms

    def tick(self) -> dict[str, Any]:
        """Rates since the previous tick, then a snapshot."""
        now = time.monotonic()
        then, frames_in, frames_out = self._last
        elapsed = max(now - then, 1e-6)
        self.input_fps = (self.frames_in - frames_in) / elapsed
        self.output_fps = (self.frames_out - frames_out) / elapsed
        self._last = (now, self.frames_in, self.frames_out)
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        latencies = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        p50, p95 = np.percentile(latencies, [50, 95])
        return {"input_fps": round(self.input_fps, 2), "output_fps": round(self.output_fps, 2),
                "frames_in": self.frames_in, "frames_out": self.frames_out, "dropped": self.dropped,
                "latency_ms": {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}}
