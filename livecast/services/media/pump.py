"""The frame pump shared by the live routes (WebRTC sessions, WebSocket frame sessions).

Input frames land in a depth-1 slot (latest wins); the pump converts each one off the event loop
and submits it to the batcher at once, where it replaces a frame still waiting (latest wins
again), so whenever the device gets to the stream it works on the freshest picture; results
land in a second depth-1 slot for the sender. Every replaced frame is counted as dropped, and
rates and latencies are kept per client.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Awaitable, Callable

import numpy as np

from livecast.streamdiff import FrameDropped

logger = logging.getLogger("livecast.media")


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


class FramePump:
    """offer() → convert → submit → next_result(), for one stream of one client.

    `convert(item)` turns an offered item into `(frame or None, tag)` off the loop, or returns
    None to skip it (it reports its own errors); `tag` comes back with the result. `on_error(tag,
    error)` hears of a frame the pipeline rejected. `is_frame(item)` says whether a replaced item
    counts as a dropped frame (a txt2img `next` request does not)."""

    def __init__(self, service, stream_id: str | None, source: str,
                 convert: Callable[[Any], Awaitable[tuple[Any, Any] | None]],
                 on_error: Callable[[Any, BaseException], None] | None = None,
                 is_frame: Callable[[Any], bool] = lambda item: True) -> None:
        self.service, self.stream_id, self.source = service, stream_id, source
        self.convert, self.on_error, self.is_frame = convert, on_error, is_frame
        self.slot = LatestSlot()  # offered items, latest wins
        self.results = LatestSlot()  # (image, tag) for the sender, latest wins
        self.stats = FrameStats()

    def offer(self, item: Any, counts_as_input: bool = True) -> None:
        if counts_as_input:
            self.stats.frames_in += 1
        waiting = self.slot.peek()
        if self.slot.put(item) and self.is_frame(waiting):
            self.dropped()

    def dropped(self) -> None:
        self.stats.dropped += 1
        self.service.metrics.frames_dropped.labels(self.source).inc()

    async def run(self) -> None:
        """Feed the batcher until cancelled or the stream goes away."""
        while True:
            converted = await self.convert(await self.slot.get())
            if converted is None:
                continue
            frame, tag = converted
            try:
                result = self.service.submit(self.stream_id, frame, self.source)
            except KeyError:  # the stream is gone: the session is closing
                return
            except ValueError as exc:
                self._failed(tag, exc)
                continue
            result.add_done_callback(lambda done, tag=tag: self._on_result(done, tag))

    def _on_result(self, done: asyncio.Future, tag: Any) -> None:
        if done.cancelled():
            return
        error = done.exception()
        if isinstance(error, FrameDropped):  # a newer frame replaced it, or the stream went away
            self.dropped()
        elif error is not None:  # one bad frame must not end the session
            self._failed(tag, error)
        elif self.results.put((done.result(), tag)):
            self.dropped()  # made but replaced before the sender took it

    def _failed(self, tag: Any, error: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(tag, error)
        else:
            logger.error("%s stream %s: frame failed: %r", self.source, self.stream_id, error)

    async def next_result(self) -> tuple[Any, Any]:
        return await self.results.get()
