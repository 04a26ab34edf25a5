"""The code interpreter's settings: every default once, the flags `livecast serve` builds from them."""
from __future__ import annotations

from dataclasses import dataclass, field

from livecast.services.sandbox.cgroups import CgroupLimits
from livecast.services.sandbox.limits import MIB, Limits


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
        "flag": "--sandbox-memory-mb", "help": "memory of one code-interpreter container (MiB): each process's "
        "address space, and where a cgroup can be made, all its processes together"})
    cpus: float = 1.0  # CPU bandwidth of one container where a cgroup can be made (cpu.max)
    cgroup_dir: str = field(default="", metadata={
        "flag": "--sandbox-cgroup-dir", "help": "a cgroup v2 directory delegated to the server (empty, e.g. a "
        "systemd unit's with Delegate=yes) for per-container memory, process and CPU limits; "
        "empty = the server's own cgroup, else v1 as root"})
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
        for name in ("idle_expiry_s", "timeout_s", "cpus"):
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

    def cgroup_limits(self) -> CgroupLimits:
        return CgroupLimits(self.memory_mb * MIB, self.max_processes, self.cpus)
