"""Start the scaled server: Ray, the LLM and media deployments on Serve, then the ingress.

`run_scaled(settings, scale)` is what `livecast serve --replicas N` runs; `Cluster` is the same
thing as a context manager (the ingress on a thread) for tests and `livecast bench scale`.
Serve's own HTTP proxy stays off: the ingress is ours, so it can route on prompt prefixes and
sticky ids and stream replicas' bytes through untouched.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time

import ray
from ray import serve

from livecast.services.scale.config import ScaleConfig
from livecast.services.scale.ingress import Ingress
from livecast.services.scale.registry import NAMESPACE, LiveSet, kill_registry, registry_actor
from livecast.services.scale.replica import LivecastReplica
from livecast.services.scale.server_thread import ServerThread
from livecast.services.settings import ServerSettings

HEALTH_CHECK_PERIOD_S = 2.0
HEALTH_CHECK_TIMEOUT_S = 30.0
SERVE_LOGGING = {"log_level": "WARNING"}  # Serve's per-request and lifecycle INFO lines drown the server's own
OBJECT_STORE_BYTES = 256 << 20  # replicas pass no tensors through Ray: keep its shared memory small

log = logging.getLogger(__name__)


def queue_depth_policy(ctx):
    """Serve autoscaling policy: replicas = total reported load / target load per replica.
    The ingress bypasses Serve's router, so the default (Serve-counted ongoing requests) reads 0;
    replicas report their engine queue through `record_autoscaling_stats`."""
    loads = (ctx.aggregated_metrics or {}).get("load", {})
    if not loads:
        return ctx.target_num_replicas, {}
    desired = math.ceil(sum(loads.values()) / ctx.config.get_target_ongoing_requests())
    return max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, desired)), {}


def plan(settings: ServerSettings, scale: ScaleConfig) -> dict[str, int]:
    """Replicas per kind."""
    counts = {"llm": scale.num_llm if settings.enable_llm else 0, "media": scale.num_media(settings.enable_diffusion)}
    if not any(counts.values()):
        raise ValueError("--replicas needs the LLM or the diffusion pipeline enabled")
    return counts


def deploy(settings: ServerSettings, scale: ScaleConfig, counts: dict[str, int]) -> None:
    """Both deployments at once (their replicas load in parallel); returns before they are up."""
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    cpus = scale.cpus_per_replica(sum(counts.values()))
    actor_options = {"num_gpus": 1} if gpu else {"num_cpus": cpus}
    serve.start(proxy_location="Disabled", logging_config=SERVE_LOGGING)
    targets = []
    for kind, count in counts.items():
        if count:
            app = serve.deployment(LivecastReplica).options(**deployment_options(kind, count, scale, actor_options))
            bound = app.bind(settings, kind, scale.heartbeat_s, cpus, scale.replica_timeout_s,
                             node_address=bool(scale.ray_address))  # joined: maybe several machines
            targets.append(serve.RunTarget(bound, name=f"livecast-{kind}", route_prefix=None,
                                           logging_config=SERVE_LOGGING))
    serve.run_many(targets, wait_for_applications_running=False)


def deployment_options(kind: str, count: int, scale: ScaleConfig, actor_options: dict) -> dict:
    """`serve.deployment(...).options(...)` for one kind: a fixed count, or (LLM, --max-replicas)
    autoscaling on the replicas' own queue depth."""
    options = dict(name=f"livecast-{kind}", ray_actor_options=actor_options,
                   health_check_period_s=HEALTH_CHECK_PERIOD_S, health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
                   graceful_shutdown_timeout_s=20, max_constructor_retry_count=3)
    if kind == "llm" and scale.max_replicas:
        options["autoscaling_config"] = {
            "min_replicas": count, "initial_replicas": count, "max_replicas": scale.max_replicas,
            "target_ongoing_requests": scale.target_load, "policy": {"policy_function": queue_depth_policy}}
    else:
        options["num_replicas"] = count
    return options


def wait_ready(live: LiveSet, counts: dict[str, int], timeout_s: float) -> list[dict]:
    """Until the registry lists every replica; raises with Serve's message if a deployment failed."""
    deadline = time.monotonic() + timeout_s
    while True:
        infos = live.now()
        have = {kind: sum(i["kind"] == kind for i in infos) for kind in counts}
        if all(have[kind] >= n for kind, n in counts.items()):
            return infos
        for name, app in serve.status().applications.items():
            if app.status == "DEPLOY_FAILED":
                raise RuntimeError(f"Serve could not deploy {name}: {app.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"replicas up after {timeout_s:.0f}s: {have} of {counts}")
        time.sleep(0.25)


class Cluster:
    """Ray + Serve deployments + the ingress on `settings.host:settings.port` (0: a free port),
    torn down on exit, even when startup fails. `num_cpus`: a local Ray's CPU count (tests)."""

    def __init__(self, settings: ServerSettings, scale: ScaleConfig, *, num_cpus: int | None = None) -> None:
        if not scale.enabled:
            raise ValueError("Cluster needs scale.replicas >= 1")
        self.settings, self.scale, self.num_cpus = settings, scale, num_cpus
        self.counts = plan(settings, scale)
        self._started_ray = False
        self._http: ServerThread | None = None
        self.url = ""

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        if not ray.is_initialized():
            if self.scale.ray_address:
                ray.init(address=self.scale.ray_address, namespace=NAMESPACE, logging_level=logging.WARNING)
            else:
                ray.init(num_cpus=self.num_cpus or os.cpu_count(), include_dashboard=False, namespace=NAMESPACE,
                         logging_level=logging.WARNING, object_store_memory=OBJECT_STORE_BYTES)
            self._started_ray = True
        registry_actor()
        deploy(self.settings, self.scale, self.counts)
        self.live = LiveSet(self.scale.heartbeat_s)
        wait_ready(self.live, self.counts, self.scale.replica_timeout_s)
        self.ingress = ingress = Ingress(self.scale, self.live.poll, max_body_bytes=self.settings.max_body_bytes,
                          retry_after_s=self.settings.retry_after_s, allowed_origins=self.settings.origins)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.settings.host, self.settings.port))
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        self._http = ServerThread(ingress, sock, name="livecast-ingress", ws_max_size=self.settings.max_body_bytes,
                                  timeout_s=30)

    @property
    def alive(self) -> bool:
        return self._http is not None and self._http.thread.is_alive()

    def replicas(self) -> list[dict]:
        """The registry's live replicas (id, kind, pid, address, device, load, age_s)."""
        return self.live.now()

    def kill(self, replica_id: str) -> int:
        """SIGKILL a replica's process (same machine only); returns its pid."""
        pid = next(r["pid"] for r in self.replicas() if r["id"] == replica_id)
        os.kill(pid, signal.SIGKILL)
        return pid

    def close(self) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None
        if ray.is_initialized():
            try:
                for kind, count in self.counts.items():
                    if count:
                        serve.delete(f"livecast-{kind}")
                kill_registry()
            except Exception as exc:  # Ray going down under us: ray.shutdown() below still runs
                log.warning("could not remove the deployments: %s", exc)
            finally:
                if self._started_ray:
                    ray.shutdown()
                    self._started_ray = False


def run_scaled(settings: ServerSettings, scale: ScaleConfig) -> int:
    """`livecast serve --replicas N`: serve until SIGINT/SIGTERM, then take everything down."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with Cluster(settings, scale) as cluster:
        print(f"livecast: {cluster.counts['llm']} LLM + {cluster.counts['media']} media replicas "
              f"behind {cluster.url} (routing: {scale.routing})", flush=True)
        try:
            while cluster.alive:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0
