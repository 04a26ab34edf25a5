"""ScaleConfig: how many replicas of each kind run behind the ingress, and where (the `--replicas` flags).

`replicas == 0` keeps the single-process server; any positive value turns on the Ray Serve mode
(services.scale.launcher). Each default is written here once; `livecast serve` builds its flags
from the fields whose metadata has `help`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from livecast.services.scale.routing import POLICIES


@dataclass(slots=True)
class ScaleConfig:
    replicas: int = field(default=0, metadata={
        "help": "run N LLM replicas on Ray Serve behind one ingress on --host/--port (0: one process, no Ray)"})
    llm_replicas: int = field(default=0, metadata={"help": "LLM replicas (0: --replicas)"})
    media_replicas: int = field(default=0, metadata={"help": "media replicas (0: 1 when diffusion is on)"})
    ray_address: str = field(default="", metadata={
        "help": "join this Ray cluster (ray://host:10001 or host:6379; empty: start a local one)"})
    max_replicas: int = field(default=0, metadata={
        "help": "> 0: Serve autoscales the LLM replicas between --llm-replicas and this, on queue depth"})
    routing: str = field(default="prefix", metadata={
        "help": "LLM replica choice: prefix (the replica whose KV cache holds the prompt's head) or round_robin"})
    replica_cpus: float = field(default=0.0, metadata={
        "help": "CPUs Ray reserves for each replica on a CPU machine (0: cores / replica count)"})
    heartbeat_s: float = field(default=0.5, metadata={
        "help": "seconds between replica heartbeats; the ingress drops a replica silent for 3 of them"})
    replica_timeout_s: float = field(default=300.0, metadata={
        "help": "seconds to wait for every replica to load its models and come up"})
    max_inflight: int = 1024           # proxied requests + WebSockets at once; beyond: 503
    connect_timeout_s: float = 2.0     # to a replica: a dead one must not hold a request long
    max_tries: int = 3                 # replicas tried for one request before it fails
    target_load: float = 4.0           # autoscaling aims at this many requests in flight per replica

    def __post_init__(self) -> None:
        for name in ("replicas", "llm_replicas", "media_replicas", "max_replicas"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.routing not in POLICIES:
            raise ValueError(f"routing must be one of {', '.join(POLICIES)}, got {self.routing!r}")
        if self.replica_cpus < 0:
            raise ValueError(f"replica_cpus must be >= 0, got {self.replica_cpus}")
        if not 0.05 <= self.heartbeat_s <= 10:
            raise ValueError(f"heartbeat_s must be in [0.05, 10], got {self.heartbeat_s}")
        if self.replica_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("replica_timeout_s and connect_timeout_s must be > 0")
        if self.max_inflight < 1 or self.max_tries < 1 or self.target_load <= 0:
            raise ValueError("max_inflight, max_tries and target_load must be positive")
        if self.max_replicas and self.max_replicas < self.num_llm:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= the LLM replicas ({self.num_llm})")

    @property
    def enabled(self) -> bool:
        return self.replicas > 0

    @property
    def num_llm(self) -> int:
        return self.llm_replicas or self.replicas

    def num_media(self, diffusion_on: bool) -> int:
        if not diffusion_on:
            return 0
        return self.media_replicas or 1

    def cpus_per_replica(self, num_replicas: int) -> float:
        """Ray's CPU reservation for one replica: the flag, else the machine's cores shared out."""
        if self.replica_cpus:
            return self.replica_cpus
        # rounded down: three replicas of round(2/3, 2) would ask Ray for 2.01 of 2 CPUs
        return max(0.01, math.floor(100 * (os.cpu_count() or 1) / max(1, num_replicas)) / 100)
