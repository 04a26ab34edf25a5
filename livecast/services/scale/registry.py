"""The live replica set: replicas heartbeat their `info()` into one named, detached Ray actor.

Why heartbeats rather than asking Serve: Serve's own view (controller state, handles) lags a
SIGKILLed replica by its health-check period and exposes no address of our per-replica server;
a heartbeat that stops is noticed within `3 * heartbeat_s` by the ingress, which polls
`live()` every heartbeat. A replacement replica registers on its first beat, so the ingress
sees it within one poll. Ages are measured on the registry's own clock, so replicas on other
machines need no synchronised clocks.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import ray

NAME, NAMESPACE = "livecast-registry", "livecast"
MISSED_BEATS = 3  # a replica silent this many heartbeats is gone

log = logging.getLogger(__name__)


class _Registry:
    """Replica id -> (its last info dict, when it arrived). Tiny, so a plain single-threaded actor."""

    def __init__(self) -> None:
        self._beats: dict[str, tuple[dict, float]] = {}

    def beat(self, info: dict) -> None:
        self._beats[info["id"]] = (info, time.monotonic())

    def leave(self, replica_id: str) -> None:
        self._beats.pop(replica_id, None)

    def live(self, max_age_s: float) -> list[dict]:
        now = time.monotonic()
        for rid in [rid for rid, (_, at) in self._beats.items() if now - at > 10 * max_age_s]:
            del self._beats[rid]  # forget the long dead, keep the table small
        return [dict(info, age_s=round(now - at, 3)) for info, at in self._beats.values() if now - at <= max_age_s]


def registry_actor():
    """The cluster's registry, created on first use. Detached, so it outlives the process that made
    it (replicas beat into it while an ingress restarts); it holds no resources (num_cpus=0)."""
    return ray.remote(_Registry).options(name=NAME, namespace=NAMESPACE, lifetime="detached",
                                         get_if_exists=True, num_cpus=0, max_restarts=-1).remote()


def kill_registry() -> None:
    try:
        ray.kill(ray.get_actor(NAME, namespace=NAMESPACE))
    except ValueError:
        pass  # never created, or already gone


class Heartbeat:
    """A daemon thread in a replica: `info()` into the registry every `period_s` until `stop()`.
    A thread, not a task on the replica's event loop, so a busy loop cannot make a live replica
    look dead (a wedged one is caught by Serve's health check instead)."""

    def __init__(self, info: Callable[[], dict], period_s: float) -> None:
        self._info, self.period_s = info, period_s
        self._stop = threading.Event()
        self._registry = registry_actor()
        self._thread = threading.Thread(target=self._run, name="livecast-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> None:
        ray.get(self._registry.beat.remote(self._info()), timeout=max(5.0, 4 * self.period_s))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.beat()
            except Exception as exc:  # the registry restarting: the next beat re-registers
                log.warning("heartbeat failed: %s", exc)
                self._registry = registry_actor()

    def stop(self, replica_id: str) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.period_s + 5)
        try:
            ray.get(self._registry.leave.remote(replica_id), timeout=5)
        except Exception:
            pass  # Ray going down with us: the entry ages out


class LiveSet:
    """The ingress's side: polls the registry; `await poll()` returns the live info dicts."""

    def __init__(self, heartbeat_s: float) -> None:
        self.max_age_s = MISSED_BEATS * heartbeat_s
        self._registry = registry_actor()

    def now(self) -> list[dict]:
        """The same, blocking (for code outside an event loop)."""
        return ray.get(self._registry.live.remote(self.max_age_s))

    async def poll(self) -> list[dict]:
        try:
            return await self._registry.live.remote(self.max_age_s)
        except ray.exceptions.RayActorError:
            self._registry = registry_actor()  # restarted (max_restarts): replicas re-register
            return []
