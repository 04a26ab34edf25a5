"""Per-container cgroups: memory (swap included), processes and CPU bounded for all of a
container's processes together, where the host lets the server make cgroups.

rlimits bound each process: eight forked children of 600 MiB each passed a 1,024 MiB limit. A
cgroup bounds their sum. `setup` finds, by trying, where this server may create cgroups:

- cgroup v2: a directory delegated to it (`--sandbox-cgroup-dir`, e.g. a systemd unit's with
  Delegate=yes), else its own cgroup (/proc/self/cgroup), with memory and pids in the directory's
  cgroup.subtree_control (enabled now if they are not: v2 refuses that, EBUSY, while the directory
  itself holds processes — its no-internal-processes rule);
- else cgroup v1 as root, on a host whose memory, pids (and cpu) controllers are bound to v1
  hierarchies (a hybrid host: the v2 tree then has none of them).

It creates one parent cgroup for this server (`livecast-sandbox-<pid>`) and each container a child
of it: memory.max (v1: memory.limit_in_bytes) = the container's memory, no swap, pids.max, cpu.max
(v1: cpu.cfs_quota_us). The bootstrap joins the container's cgroup.procs before it sets rlimits,
drops root or reads code, so every process of the container is born inside it; in the sandbox the
cgroup namespace hides the path, and no cgroup filesystem is mounted. Where none of this is allowed
the server keeps the per-process rlimits and reports `cgroup: null` and the reason.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from livecast.services.sandbox.limits import MIB

REQUIRED = ("memory", "pids")
_CONTROLLERS = ("memory", "pids", "cpu")


class Unavailable(Exception):
    """Why no cgroup of this kind can be made here."""


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    memory_bytes: int
    max_pids: int
    cpus: float  # CPU bandwidth: cpu.max quota over a 100 ms period
    period_us: int = 100_000

    def files(self, version: int, hierarchy: str) -> list[tuple[str, str]]:
        """(control file, value) in the order they must be written; only what the hierarchy holds."""
        quota_us = max(int(self.cpus * self.period_us), 1000)
        if version == 2:
            return [("memory.max", str(self.memory_bytes)), ("memory.swap.max", "0"), ("pids.max", str(self.max_pids)),
                    ("cpu.max", f"{quota_us} {self.period_us}")]
        return {"memory": [("memory.limit_in_bytes", str(self.memory_bytes)),  # before memsw, which must be >= it
                           ("memory.memsw.limit_in_bytes", str(self.memory_bytes))],  # memory + swap: no swap
                "pids": [("pids.max", str(self.max_pids))],
                "cpu": [("cpu.cfs_period_us", str(self.period_us)), ("cpu.cfs_quota_us", str(quota_us))]}[hierarchy]


_REQUIRED_FILES = {"memory.max", "pids.max", "memory.limit_in_bytes"}


@dataclass(frozen=True, slots=True)
class Site:
    """This server's parent cgroup (one per hierarchy: v2 has one) and what each container gets."""
    version: int
    parents: dict[str, str]  # "unified" (v2) or a v1 controller -> this server's parent cgroup
    limits: CgroupLimits
    in_force: tuple[str, ...]  # the control files each container's cgroup holds and gets written

    def dirs(self, name: str) -> list[str]:
        return [os.path.join(parent, name) for parent in self.parents.values()]

    def create(self, name: str) -> list[str]:
        """The container's cgroup with its limits (again, if it exists): the cgroup.procs files its
        bootstrap must join."""
        for hierarchy, parent in self.parents.items():
            path = os.path.join(parent, name)
            os.makedirs(path, exist_ok=True)
            for file, value in self.limits.files(self.version, hierarchy):
                if file in self.in_force:
                    _write(os.path.join(path, file), value)
        return [os.path.join(path, "cgroup.procs") for path in self.dirs(name)]

    def remove(self, name: str) -> None:
        """Once its processes are gone (a dying one may hold it for a moment: EBUSY)."""
        for path in self.dirs(name):
            _rmdir(path)

    def oom_kills(self, name: str) -> int:
        """Processes of the container the kernel killed for its memory limit."""
        memory = os.path.join(self.parents["unified" if self.version == 2 else "memory"], name)
        events = "memory.events" if self.version == 2 else "memory.oom_control"
        return _keyed(os.path.join(memory, events)).get("oom_kill", 0)

    def peak_bytes(self, name: str) -> int:
        memory = os.path.join(self.parents["unified" if self.version == 2 else "memory"], name)
        return int(_read(os.path.join(memory, "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")))

    def close(self) -> None:
        """Remove what this server made: containers' cgroups left behind, then the parents."""
        for parent in self.parents.values():
            for entry in os.scandir(parent) if os.path.isdir(parent) else ():
                if entry.is_dir(follow_symlinks=False):
                    _rmdir(entry.path)
            _rmdir(parent)

    def to_json(self) -> dict:
        memsw = "memory.swap.max" in self.in_force or "memory.memsw.limit_in_bytes" in self.in_force
        cpu = "cpu.max" in self.in_force or "cpu.cfs_quota_us" in self.in_force
        return {"version": self.version, "parents": dict(self.parents),
                "memory_mb": self.limits.memory_bytes // MIB, "swap_mb": 0 if memsw else None,
                "processes_and_threads": self.limits.max_pids, "cpus": self.limits.cpus if cpu else None}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(path: str) -> dict[str, int]:
    try:
        return {key: int(value) for key, value in (line.split() for line in _read(path).splitlines() if line)}
    except (OSError, ValueError):
        return {}


def _rmdir(path: str) -> None:
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    os.rmdir(path)


def _sweep(base: str) -> None:
    """Remove what a server that was killed left here: its parent cgroup, once empty (rmdir refuses
    a cgroup that holds processes), when no process of its pid is alive."""
    for entry in os.scandir(base) if os.path.isdir(base) else ():
        pid = entry.name.removeprefix("livecast-sandbox-")
        if entry.name.startswith("livecast-sandbox-") and pid.isdigit() and not _alive(int(pid)):
            try:
                for child in os.scandir(entry.path):
                    if child.is_dir(follow_symlinks=False):
                        os.rmdir(child.path)
                os.rmdir(entry.path)
            except OSError:
                pass  # still in use, or not ours to remove


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def membership(text: str) -> dict[str, str]:
    """/proc/self/cgroup as {controller: path}; cgroup v2's line ("0::/path") under ""."""
    found = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _controllers(path: str) -> set[str]:
    return {word.lstrip("+") for word in _read(path).split()}


def _setup_v2(name: str, limits: CgroupLimits, root: str, member: dict[str, str], delegated: str) -> Site:
    unified = next((d for d in (root, os.path.join(root, "unified")) if os.path.exists(os.path.join(d, "cgroup.controllers"))), None)
    if unified is None:
        raise Unavailable(f"no cgroup2 filesystem at {root} or {root}/unified")
    if not delegated and "" not in member:
        raise Unavailable("this process is in no cgroup v2 (/proc/self/cgroup has no 0:: line)")
    base = delegated or os.path.join(unified, member[""].lstrip("/"))
    offered = _controllers(os.path.join(base, "cgroup.controllers"))
    if missing := [c for c in REQUIRED if c not in offered]:
        raise Unavailable(f"{base} offers {', '.join(sorted(offered)) or 'no controllers'}, not {', '.join(missing)} "
                          "(on a hybrid host they are bound to v1 hierarchies)")
    wanted = [c for c in _CONTROLLERS if c in offered]
    enable = " ".join("+" + c for c in wanted)
    if any(c not in _controllers(os.path.join(base, "cgroup.subtree_control")) for c in wanted):
        try:
            _write(os.path.join(base, "cgroup.subtree_control"), enable)
        except OSError as exc:
            why = ("it holds processes, and cgroup v2 enables controllers only for the children of a cgroup "
                   "without any; delegate an empty one with --sandbox-cgroup-dir") if exc.errno == errno.EBUSY else exc
            raise Unavailable(f"cannot enable {', '.join(wanted)} for the children of {base}: {why}") from None
    parent = os.path.join(base, name)
    _sweep(base)
    try:
        os.makedirs(parent, exist_ok=True)
        _write(os.path.join(parent, "cgroup.subtree_control"), enable)
    except OSError as exc:
        raise Unavailable(f"cannot create {parent} with {', '.join(wanted)} for its children: {exc}") from None
    return Site(2, {"unified": parent}, limits, _in_force(2, {"unified": parent}, limits))


def _setup_v1(name: str, limits: CgroupLimits, root: str, member: dict[str, str]) -> Site:
    parents = {}
    for controller in _CONTROLLERS:
        mount = os.path.join(root, controller)
        if not os.path.exists(os.path.join(mount, "cgroup.procs")) or controller not in member:
            if controller in REQUIRED:
                raise Unavailable(f"no v1 {controller} hierarchy at {mount} that this process is in")
            continue
        parent = os.path.join(mount, member[controller].lstrip("/"), name)
        _sweep(os.path.dirname(parent))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            for made in parents.values():
                _rmdir(made)
            raise Unavailable(f"cannot create {parent}: {exc}") from None
        parents[controller] = parent
    return Site(1, parents, limits, _in_force(1, parents, limits))


def _in_force(version: int, parents: dict[str, str], limits: CgroupLimits) -> tuple[str, ...]:
    """The required files, and the optional ones this kernel has (no swap accounting: no memory.swap.max)."""
    return tuple(file for hierarchy, parent in parents.items() for file, _ in limits.files(version, hierarchy)
                 if file in _REQUIRED_FILES or os.path.exists(os.path.join(parent, file)))


def setup(limits: CgroupLimits, delegated: str = "", root: str = "/sys/fs/cgroup",
          proc_self_cgroup: str = "/proc/self/cgroup") -> tuple[Site | None, str]:
    """This server's parent cgroup, created now, and why not v2 (where v1 is used); or None and why
    neither (one reason per version)."""
    name = f"livecast-sandbox-{os.getpid()}"
    try:
        member = membership(_read(proc_self_cgroup))
    except OSError as exc:
        return None, f"cannot read {proc_self_cgroup}: {exc}"
    try:
        return _setup_v2(name, limits, root, member, delegated), ""
    except (Unavailable, OSError) as exc:
        why_not_v2 = f"cgroup v2: {exc}"
    if delegated:
        return None, why_not_v2
    try:
        return _setup_v1(name, limits, root, member), why_not_v2
    except (Unavailable, OSError) as exc:
        return None, f"{why_not_v2}; cgroup v1: {exc}"
