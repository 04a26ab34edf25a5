"""Driven work: an engine stepped by the one owner of the device, or by a thread of its own.

The LLM engine, the stream batcher and the embedding batcher are each a queue in front of a
model. In the server the device runtime steps all three from one thread; in a script, a test or
a bench each steps itself. Both ways go through the same four methods, which are all the device
runtime ever calls:

- `set_notify(fn)`: hand stepping to an outside owner; `fn()` is called whenever work arrives
  (the owner's idle loop wakes). No private thread is started after that.
- `load() -> Load`: plain data about what is waiting, read before choosing what runs next.
- `step(token_budget=None) -> int`: one unit of model work; returns how much it did, 0 for none.
  `token_budget` caps the tokens of one LLM step (others ignore it).
- `cancel_all()`: end everything queued or running, each with its own clear error or finish.

Without an owner, `start()` runs `step()` on a thread of this object until `stop_thread()`.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

logger = logging.getLogger("livecast.driven")


@dataclass(frozen=True, slots=True)
class Load:
    """What a driven engine reports to its driver, as plain values."""
    waiting: bool = False  # step() has work to do
    oldest_wait_s: float = 0.0  # how long the oldest queued item has waited (frames)
    active: int = 0  # live units: running sequences, open streams
    max_step_tokens: int = 0  # the most tokens one step may run (0: not budgeted in tokens)


IDLE = Load()


class Driven:
    """Base of an engine that is stepped by an outside owner or by its own thread.

    Subclasses implement `load()`, `step()` and `cancel_all()`, and call `wake()` whenever work
    arrives."""

    thread_name = "driven"
    idle_wait_s: float | None = None  # how long the own thread sleeps with nothing to do

    def __init__(self) -> None:
        self._notify = None
        self._thread: threading.Thread | None = None
        self._wakeup = threading.Event()
        self._stopping = threading.Event()

    # -- the interface a driver uses -----------------------------------------------------------
    def load(self) -> Load:
        raise NotImplementedError

    def step(self, token_budget: int | None = None) -> int:
        raise NotImplementedError

    def cancel_all(self) -> None:
        raise NotImplementedError

    def set_notify(self, notify) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.thread_name}: its own thread is already running")
        self._notify = notify

    def has_work(self) -> bool:
        return self.load().waiting

    # -- driving itself ------------------------------------------------------------------------
    @property
    def driven_from_outside(self) -> bool:
        return self._notify is not None

    def wake(self) -> None:
        """Work arrived: tell the owner, or wake the own thread (if it runs)."""
        if self._notify is not None:
            self._notify()
        else:
            self._wakeup.set()

    def start(self) -> None:
        """Step on a thread of this object's own (standalone use); a no-op if it already runs.

        On a CPU, build the model on a thread that has exited (or step from the building thread):
        a live thread that ran parallel torch ops keeps an OpenMP pool, and with more libgomp
        threads than CPUs every small op here pays a wake-up (~2x slower steps on 2 cores)."""
        if self._notify is not None:
            raise RuntimeError(f"{self.thread_name}: stepped by an outside owner, not by a thread of its own")
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop_thread(self, timeout: float | None = 30.0) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def errored(self) -> bool:
        """True when the own thread died (a bug: step failures are caught and logged)."""
        return self._thread is not None and not self._thread.is_alive() and not self._stopping.is_set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wakeup.clear()  # before the step, so work that arrives during it is not missed
            try:
                worked = self.step()
            except Exception:  # a failed step fails its own work, never the thread
                logger.exception("%s: step failed", self.thread_name)
                worked = 1
            if not worked:
                self._wakeup.wait(self.idle_wait_s)
