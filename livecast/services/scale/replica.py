"""A Serve replica: one full livecast app process (its own engines and device runtime) behind its
own uvicorn on <host>:<free port> (loopback on one machine, the node's address on a multi-node
cluster), announced to the ingress by heartbeats.

Serve owns the replica's lifecycle: it places the actor (`ray_actor_options`), restarts it when
the process dies, and replaces it when `check_health` raises (a wedged server). The app runs in
a thread with its own event loop, so neither model loading nor a busy server blocks the Serve
actor's loop that answers health checks.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket

import httpx

from livecast.services.scale.config import ScaleConfig
from livecast.services.settings import ServerSettings

HEADER = b"x-livecast-replica"
KINDS = ("llm", "media")
_HEALTH_TIMEOUT_S = 5.0

log = logging.getLogger(__name__)


class ReplicaHeader:
    """ASGI middleware: every HTTP response and WebSocket accept carries `x-livecast-replica: <id>`."""

    def __init__(self, app, replica_id: str) -> None:
        self.app, self.value = app, replica_id.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)

        async def tagged(message) -> None:
            if message["type"] in ("http.response.start", "websocket.accept", "websocket.http.response.start"):
                headers = list(message.get("headers", []))
                if not any(k.lower() == HEADER for k, _ in headers):
                    headers.append((HEADER, self.value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)


def role_settings(settings: ServerSettings, kind: str, num_threads: int) -> ServerSettings:
    """The settings one replica of `kind` runs: LLM replicas carry no diffusion; media replicas no
    LLM and no agent store. The replica binds its own loopback port."""
    if kind not in KINDS:
        raise ValueError(f"replica kind must be one of {KINDS}, got {kind!r}")
    engine = settings.engine
    if engine.num_threads is None:
        engine = dataclasses.replace(engine, num_threads=num_threads)
    # a replica is one process: it never starts replicas of its own
    own = dict(host="127.0.0.1", port=0, engine=engine, scale=ScaleConfig())
    if kind == "llm":
        return dataclasses.replace(settings, **own, enable_diffusion=False)
    return dataclasses.replace(settings, **own, enable_llm=False, enable_agents=False)


class LivecastReplica:
    """The Serve deployment class (wrapped by `serve.deployment` in the launcher).

    `settings`: the server's settings (role_settings narrows them); `cpus`: this replica's CPU
    share, which sets torch's thread count; `node_address`: listen on the node's IP (a Ray cluster
    of several machines) rather than loopback."""

    def __init__(self, settings: ServerSettings, kind: str, heartbeat_s: float, cpus: float,
                 start_timeout_s: float = 300.0, node_address: bool = False) -> None:
        import torch
        import ray
        from ray import serve

        from livecast.services.app import create_app
        from livecast.services.scale.registry import Heartbeat
        from livecast.services.scale.server_thread import ServerThread

        self.kind, self.pid = kind, os.getpid()
        self.id = f"{kind}-{serve.get_replica_context().replica_id.unique_id}"
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        threads = max(1, round(cpus)) if self.device == "cpu" else max(1, os.cpu_count() or 1)
        torch.set_num_threads(threads)
        self.app = create_app(role_settings(settings, kind, threads))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # an ingress on another machine reaches the replica at its node's address; else loopback only
        host = ray.util.get_node_ip_address() if node_address else "127.0.0.1"
        sock.bind((host, 0))  # held from here on: no other process can take the port
        self.address = f"http://{host}:{sock.getsockname()[1]}"
        # returns once the lifespan has loaded the models
        self._http = ServerThread(ReplicaHeader(self.app, self.id), sock, name=f"replica {self.id}",
                                  ws_max_size=settings.max_body_bytes, timeout_s=start_timeout_s)
        self._heartbeat = Heartbeat(self.info, heartbeat_s).start()
        log.info("replica %s (%s) serving on %s, pid %d", self.id, kind, self.address, self.pid)

    def load(self) -> int:
        """Requests in flight: running + waiting in the engine (LLM), live video sessions (media)."""
        state = self.app.state
        if self.kind == "llm" and state.llm is not None:
            stats = state.llm.engine.stats()
            return int(stats.num_running + stats.num_waiting)
        if self.kind == "media" and state.media is not None and state.media.video is not None:
            return len(state.media.video.sessions)
        return 0

    def info(self) -> dict:
        return {"id": self.id, "kind": self.kind, "pid": self.pid, "address": self.address,
                "device": self.device, "load": self.load()}

    def check_health(self) -> None:
        """Serve calls this every health_check_period_s; raising gets the replica replaced."""
        if not self._http.alive:
            raise RuntimeError(f"replica {self.id}: its server thread is gone")
        response = httpx.get(f"{self.address}/health", timeout=_HEALTH_TIMEOUT_S)
        if response.status_code != 200:
            raise RuntimeError(f"replica {self.id}: /health answered {response.status_code}")

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom-metric hook: the ingress bypasses Serve's router, so Serve's own ongoing
        request count is always 0 and autoscaling reads our queue depth instead."""
        return {"load": float(self.load())}

    def __del__(self) -> None:
        # Serve calls this on a graceful stop; a SIGKILL skips it and the heartbeat ages out
        heartbeat = getattr(self, "_heartbeat", None)
        if heartbeat is not None:
            heartbeat.stop(self.id)
        http = getattr(self, "_http", None)
        if http is not None:
            http.stop()
