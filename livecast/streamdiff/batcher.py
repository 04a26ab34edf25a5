"""StreamBatcher: many live streams, one batched UNet/VAE call per step, latest frame wins.

Submitting only records the frame (cheap checks, no model work), so it is safe on an event loop.
`step()` does the model work synchronously on whichever thread the device owner picks; `start()`
runs it on a private thread for standalone use (both through livecast.driven). Everything is bounded: one pending frame per
stream and at most `max_streams` streams.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Hashable

from livecast.driven import Driven, Load

from .config import StreamParams
from .image import Frame, frame_size
from .pipeline import StreamPipeline
from .stream import StreamState

logger = logging.getLogger(__name__)


class FrameDropped(Exception):
    """A submitted frame was not processed: replaced by a newer one, or its stream went away."""


@dataclass(slots=True)
class StreamStats:
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    frames_skipped: int = 0  # answered by the similarity filter (included in frames_out)
    frames_failed: int = 0  # rejected frames (e.g. NaN pixels)
    last_latency_ms: float = 0.0  # submit -> result
    mean_latency_ms: float = 0.0  # exponential moving average, weight 0.1


@dataclass(slots=True)
class _Pending:
    frame: Frame | None
    future: Future
    submitted_at: float
    waiting_since: float  # when the stream began waiting: a replaced frame passes its time on


@dataclass(slots=True)
class _Stream:
    params: StreamParams
    state: StreamState | None = None  # built lazily on the stepping thread (model work)
    pending: _Pending | None = None
    stats: StreamStats = field(default_factory=StreamStats)


class StreamBatcher(Driven):
    thread_name = "streamdiff-batcher"

    def __init__(self, pipe: StreamPipeline, max_batch_size: int = 8, max_streams: int = 64):
        super().__init__()
        if max_batch_size < 1 or max_streams < 1:
            raise ValueError("max_batch_size and max_streams must be >= 1")
        self.pipe = pipe
        self.max_batch_size = max_batch_size
        self.max_streams = max_streams
        self._streams: dict[Hashable, _Stream] = {}
        self._lock = threading.Lock()  # guards _streams and pending frames; never held over model work
        self._step_lock = threading.Lock()  # one step at a time

    # -- streams ---------------------------------------------------------------------------

    def add_stream(self, stream_id: Hashable, **settings: Any) -> None:
        """Register a stream; `settings` are StreamParams fields (prompt, strength, seed, ...)."""
        params = StreamParams(**settings)
        self.pipe.check(params)  # a bad width/height or lora fails here, not in step()
        with self._lock:
            if stream_id in self._streams:
                raise ValueError(f"stream {stream_id!r} already exists")
            if len(self._streams) >= self.max_streams:
                raise ValueError(f"too many streams ({self.max_streams}); remove one first")
            self._streams[stream_id] = _Stream(params)

    def update_stream(self, stream_id: Hashable, **changes: Any) -> StreamParams:
        """Change settings (prompt, strength, seed, guidance, filter...) from the next frame on;
        returns the stream's settings after the change."""
        with self._lock:
            stream = self._get(stream_id)
            params = stream.params.updated(**changes)  # validates now, applies on the next step
            self.pipe.check(params)
            stream.params = params
        return params

    def params(self, stream_id: Hashable) -> StreamParams:
        """The stream's current settings (what its next frame is made with)."""
        with self._lock:
            return self._get(stream_id).params

    def remove_stream(self, stream_id: Hashable) -> None:
        with self._lock:
            stream = self._streams.pop(stream_id, None)
        if stream is None:
            raise KeyError(f"unknown stream {stream_id!r}")
        if stream.pending is not None:
            _drop(stream.pending, "stream removed")

    def stream_ids(self) -> list[Hashable]:
        with self._lock:
            return list(self._streams)

    def stats(self, stream_id: Hashable) -> dict[str, Any]:
        with self._lock:
            return asdict(self._get(stream_id).stats)

    # -- frames ----------------------------------------------------------------------------

    def submit(self, stream_id: Hashable, frame: Frame | None) -> Future:
        """Queue `frame` (None: txt2img) as the stream's next frame; resolves to a PIL image.

        A frame still waiting is replaced and its future fails with FrameDropped.
        """
        if frame is not None:
            frame_size(frame)  # reject bad frames here, where the caller can see the error
        future: Future = Future()
        now = time.monotonic()
        with self._lock:
            stream = self._get(stream_id)
            replaced = stream.pending
            stream.pending = _Pending(frame, future, now, replaced.waiting_since if replaced else now)
            stream.stats.frames_in += 1
            if replaced is not None:
                stream.stats.frames_dropped += 1
        if replaced is not None:
            _drop(replaced, "replaced by a newer frame")
        self.wake()
        return future

    # -- the driven side (livecast.driven) ---------------------------------------------------

    def load(self) -> Load:
        """Whether frames wait, how long the longest-waiting stream has waited, and how many
        streams are open."""
        now = time.monotonic()
        with self._lock:
            times = [s.pending.waiting_since for s in self._streams.values() if s.pending]
            return Load(waiting=bool(times), oldest_wait_s=now - min(times) if times else 0.0,
                        active=len(self._streams))

    def num_pending(self) -> int:
        with self._lock:
            return sum(s.pending is not None for s in self._streams.values())

    def oldest_pending_age_s(self) -> float:
        """Seconds the longest-waiting stream has waited for a step (since its first frame still
        unanswered was submitted, newer replacements included); 0.0 when none is waiting."""
        return self.load().oldest_wait_s

    def step(self, token_budget: int | None = None) -> int:
        """Run one batched call over up to max_batch_size waiting streams (oldest first).

        Returns the number of frames answered (generated or skipped by the similarity filter).
        """
        with self._step_lock:
            batch = self._take_batch()
            if not batch:
                return 0
            try:
                items = []
                for stream, pending in batch:
                    # 1. (re)build states whose settings changed: model work, so on this thread
                    if stream.state is None or stream.state.params != stream.params:
                        stream.state = self.pipe.new_state(stream.params, previous=stream.state)
                    items.append((stream.state, pending.frame))
                # 2. one batched run; skipped frames come back as copies of the last output
                skipped_before = [s.state.filter.consecutive_skips if s.state.filter else 0
                                  for s, _ in batch]
                outputs = self.pipe.run(items, return_exceptions=True)
            except BaseException as exc:
                for _, pending in batch:
                    pending.future.set_exception(exc)
                raise
            # 3. resolve futures and account
            done = time.monotonic()
            with self._lock:
                for (stream, pending), output, before in zip(batch, outputs, skipped_before):
                    stats = stream.stats
                    if isinstance(output, Exception):
                        stats.frames_failed += 1
                        continue
                    stats.frames_out += 1
                    flt = stream.state.filter
                    stats.frames_skipped += int(flt is not None and flt.consecutive_skips > before)
                    latency_ms = (done - pending.submitted_at) * 1000
                    stats.last_latency_ms = latency_ms
                    if stats.frames_out == 1:
                        stats.mean_latency_ms = latency_ms
                    else:
                        stats.mean_latency_ms += 0.1 * (latency_ms - stats.mean_latency_ms)
            for (_, pending), output in zip(batch, outputs):
                if isinstance(output, Exception):
                    pending.future.set_exception(output)
                else:
                    pending.future.set_result(output)
            return len(batch)

    def _take_batch(self) -> list[tuple[_Stream, _Pending]]:
        with self._lock:
            waiting = sorted((s for s in self._streams.values() if s.pending is not None),
                             key=lambda s: s.pending.waiting_since)
            if not waiting:
                return []
            # Streams batch together only at the same working size (one latent shape per call).
            size = self._working_size(waiting[0])
            batch = []
            for stream in waiting:
                if len(batch) == self.max_batch_size:
                    break
                if self._working_size(stream) != size:
                    continue
                pending, stream.pending = stream.pending, None
                if pending.future.set_running_or_notify_cancel():
                    batch.append((stream, pending))
            return batch

    def _working_size(self, stream: _Stream) -> tuple[int, int]:
        return self.pipe.states.working_size(stream.params)

    def _get(self, stream_id: Hashable) -> _Stream:
        try:
            return self._streams[stream_id]
        except KeyError:
            raise KeyError(f"unknown stream {stream_id!r}") from None

    def cancel_all(self) -> None:
        """Fail every waiting frame with FrameDropped (the streams stay open)."""
        with self._lock:
            dropped = [s.pending for s in self._streams.values() if s.pending is not None]
            for stream in self._streams.values():
                if stream.pending is not None:
                    stream.stats.frames_dropped += 1
                    stream.pending = None
        for pending in dropped:
            _drop(pending, "batcher stopped")

    def stop(self) -> None:
        """Stop the own thread (if any) and fail every waiting frame with FrameDropped."""
        self.stop_thread(timeout=None)
        self.cancel_all()


def _drop(pending: _Pending, reason: str) -> None:
    if not pending.future.done():
        pending.future.set_exception(FrameDropped(reason))
