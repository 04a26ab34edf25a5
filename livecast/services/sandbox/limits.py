"""Resource limits of a container and how their breaches are named.

rlimits are set by the bootstrap before the user namespace exists: RLIMIT_NPROC then also bounds
the count kept for the container's own outside uid. CPU time is budgeted per call: the soft limit
is moved to (CPU used so far + the call's budget) before each call, so SIGXCPU interrupts a busy
loop while the interpreter and its state survive; the hard limit, the container's lifetime CPU,
kills it (SIGKILL) if the code ignores SIGXCPU.
"""
from __future__ import annotations

import errno
import resource
import signal
from dataclasses import dataclass

MIB = 1 << 20

# the names a result's `limit` takes
CPU, MEMORY, TIMEOUT, OUTPUT, FSIZE, NPROC, NOFILE, DISK, CRASH = (
    "cpu", "memory", "timeout", "output", "fsize", "nproc", "nofile", "disk", "crash")
NAMES = frozenset((CPU, MEMORY, TIMEOUT, OUTPUT, FSIZE, NPROC, NOFILE, DISK, CRASH))

OOM_SCORE_ADJ = 1000  # the most: under memory pressure the kernel kills sandboxed processes before the server


@dataclass(frozen=True, slots=True)
class Limits:
    cpu_s_per_call: int
    cpu_s_total: int
    memory_mb: int
    max_processes: int
    max_file_mb: int
    max_open_files: int

    def __post_init__(self) -> None:
        for name in self.__slots__:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cpu_s_total < self.cpu_s_per_call:
            raise ValueError("cpu_s_total must be >= cpu_s_per_call")

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in self.__slots__}


def apply_rlimits(limits: Limits) -> None:
    """In the bootstrap, before unshare; soft == hard except CPU (see `start_call`)."""
    memory = limits.memory_mb * MIB
    file_size = limits.max_file_mb * MIB
    for which, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_DATA, memory),
                         (resource.RLIMIT_NPROC, limits.max_processes), (resource.RLIMIT_FSIZE, file_size),
                         (resource.RLIMIT_NOFILE, limits.max_open_files), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_MEMLOCK, 0), (resource.RLIMIT_MSGQUEUE, 0)):
        resource.setrlimit(which, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s_per_call, limits.cpu_s_total))


class CpuLimitExceeded(BaseException):
    """Raised into user code on SIGXCPU. A BaseException, so `except Exception` does not eat it."""


def _on_sigxcpu(signum, frame):
    raise CpuLimitExceeded("CPU time limit of this call exceeded (RLIMIT_CPU)")


def install_cpu_handler() -> None:
    signal.signal(signal.SIGXCPU, _on_sigxcpu)


def start_call(cpu_s: int) -> None:
    """Give the coming call `cpu_s` CPU seconds on top of what the container already used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used_s = int(usage.ru_utime + usage.ru_stime) + 1
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    resource.setrlimit(resource.RLIMIT_CPU, (min(used_s + cpu_s, hard), hard))


def classify(exc: BaseException) -> str | None:
    """Which limit an uncaught exception from user code means, or None for an ordinary error."""
    if isinstance(exc, CpuLimitExceeded):
        return CPU
    if isinstance(exc, MemoryError):
        return MEMORY
    if isinstance(exc, OSError):
        return {errno.EFBIG: FSIZE, errno.EAGAIN: NPROC, errno.EMFILE: NOFILE,
                errno.ENOSPC: DISK, errno.EDQUOT: DISK}.get(exc.errno)
    return None


def classify_signal(signum: int, cpu_used_s: float, cpu_total_s: int) -> str:
    """Why the interpreter died of `signum` when the server did not kill it."""
    if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_used_s >= cpu_total_s - 1):
        return CPU
    if signum == signal.SIGXFSZ:
        return FSIZE
    return CRASH
