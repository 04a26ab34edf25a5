"""The code interpreter's lifespan piece: `async with containers_service(config) as pool`.

It probes the kernel and says what it found; when a layer is missing it refuses (yields None,
and the routes answer 503) unless `unsafe=True`, in which case it runs with what there is and
says so loudly at startup — never a silent downgrade.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from livecast.services.sandbox import paths
from livecast.services.sandbox.container import ContainerSpec
from livecast.services.sandbox.files import remove_tree
from livecast.services.sandbox.limits import Limits
from livecast.services.sandbox.pool import ContainerPool
from livecast.services.sandbox.probe import Support, probe

logger = logging.getLogger("livecast.sandbox")


@dataclass(slots=True)
class SandboxConfig:
    enabled: bool = field(default=True, metadata={
        "flag": "--no-code-interpreter", "help": "serve no code interpreter (containers API and tool)"})
    max_containers: int = field(default=16, metadata={
        "help": "live code-interpreter containers; the least recently used is evicted past it"})
    idle_expiry_s: float = 20 * 60.0  # OpenAI's default: 20 minutes after the last use
    timeout_s: float = field(default=30.0, metadata={
        "flag": "--sandbox-timeout-s", "help": "wall clock per code-interpreter call; kills the whole process tree"})
    cpu_s: int = 30  # CPU seconds per call (RLIMIT_CPU soft, moved before each call)
    cpu_s_total: int = 600  # CPU seconds over a container's life (RLIMIT_CPU hard)
    memory_mb: int = field(default=1024, metadata={
        "flag": "--sandbox-memory-mb", "help": "address space of one code-interpreter process (MiB)"})
    max_processes: int = 64  # processes and threads (RLIMIT_NPROC)
    max_file_mb: int = 256  # largest file the code may write (RLIMIT_FSIZE)
    max_open_files: int = 256  # RLIMIT_NOFILE
    disk_mb: int = 1024  # all files of one container, checked after each call
    output_limit_bytes: int = 64 * 1024  # per stream per call; the rest is counted, not kept
    packages: tuple[str, ...] = ("numpy", "matplotlib")  # importable inside, with their dependencies
    preload: tuple[str, ...] = ("numpy",)  # imported before the sandbox closes: faster first call
    spares: int = 1  # interpreters started ahead of need, so a new container starts warm
    root_dir: str = ""  # containers' directories; "" = a fresh temporary directory per server
    uid_base: int = 1 << 20  # a root server runs each container as its own uid from here up
    unsafe: bool = field(default=False, metadata={
        "flag": "--unsafe-code-interpreter",
        "help": "run the code interpreter even where the kernel lacks a sandbox layer (see docs/SECURITY.md)"})

    def __post_init__(self) -> None:
        for name in ("max_containers", "cpu_s", "cpu_s_total", "memory_mb", "max_processes", "max_file_mb",
                     "max_open_files", "disk_mb", "output_limit_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("idle_expiry_s", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.spares < 0 or self.spares > 8:
            raise ValueError(f"spares must be in [0, 8], got {self.spares}")
        if self.cpu_s_total < self.cpu_s:
            raise ValueError(f"cpu_s_total ({self.cpu_s_total}) must be >= cpu_s ({self.cpu_s})")
        if not 1000 <= self.uid_base <= (1 << 31) - (1 << 24):
            raise ValueError(f"uid_base must be in [1000, 2**31 - 2**24], got {self.uid_base}")
        self.packages, self.preload = tuple(self.packages), tuple(self.preload)

    def limits(self) -> Limits:
        return Limits(self.cpu_s, self.cpu_s_total, self.memory_mb, self.max_processes, self.max_file_mb,
                      self.max_open_files)


def container_spec(config: SandboxConfig, support: Support) -> ContainerSpec:
    """Layers: all three, or (unsafe) whichever this kernel has. The uid only decides which
    directories need hiding; any uid in the pool's range sees the same ones."""
    uid = config.uid_base if os.geteuid() == 0 else os.getuid()
    policy = paths.build_policy(config.packages, uid, uid)
    return ContainerSpec(config.limits(), support.layers, support.landlock_abi, policy.to_json(), config.preload,
                         config.output_limit_bytes, config.disk_mb << 20)


def check_support(config: SandboxConfig) -> tuple[Support, str | None]:
    """The probe, logged; and the reason to refuse, if any."""
    support = probe()
    logger.info(support.describe())
    if not support.missing:
        return support, None
    if config.unsafe:
        logger.warning("code interpreter runs WITHOUT %s (--unsafe-code-interpreter): model-written code is "
                       "less contained than docs/SECURITY.md describes", ", ".join(support.missing))
        return support, None
    return support, (f"the code interpreter is disabled: this kernel lacks {', '.join(support.missing)}; "
                     "start the server with --unsafe-code-interpreter to run code without it")


def make_root(config: SandboxConfig) -> tuple[str, bool]:
    """(root directory, whether we created it). Traversable but not listable by container uids."""
    if config.root_dir:
        os.makedirs(config.root_dir, exist_ok=True)
        root, owned = config.root_dir, False
    else:
        root, owned = tempfile.mkdtemp(prefix="livecast-containers-"), True
    os.chmod(root, 0o711)
    return root, owned


@asynccontextmanager
async def containers_service(config: SandboxConfig) -> AsyncIterator[ContainerPool | None]:
    if not config.enabled:
        yield None
        return
    support, refusal = check_support(config)
    if refusal is not None:
        logger.error(refusal)
        yield None
        return
    root, owned = make_root(config)
    pool = ContainerPool(container_spec(config, support), root, max_containers=config.max_containers,
                         idle_expiry_s=config.idle_expiry_s, timeout_s=config.timeout_s, spares=config.spares,
                         uid_base=config.uid_base)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()
        if owned:
            try:
                remove_tree(root)
            except OSError as exc:
                logger.error("code interpreter: %s not removed completely: %s", root, exc)
