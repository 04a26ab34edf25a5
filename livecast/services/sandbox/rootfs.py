"""The sandbox's own root: a minimal tree on a tmpfs, entered with pivot_root, the host's detached.

Landlock rules opening, reading and writing, not path lookup: with the host's tree in its mount
namespace, the code could stat, readlink and access any path it can name (`/etc/shadow`'s size and
times, where a symlink points). Here the host's paths simply do not exist. PID 1 builds, in its
own mount namespace: read-only binds of the policy's paths (the interpreter, the standard library,
the allowed distributions, /usr/lib, a few /etc files and device nodes) at their host paths, the
symlinks on the way to them (/lib -> usr/lib, the venv's bin/python chain, /etc/localtime), a fresh
/proc of the sandbox's PID namespace, the container's scratch directory at /tmp and its working
directory at /mnt/data. It then pivots into the tree, detaches the old root and makes the tree's
own tmpfs read-only: outside /tmp and /mnt/data nothing can be created.
"""
from __future__ import annotations

import ctypes
import os
import stat

from livecast.services.sandbox.namespaces import (MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY,
                                                  MS_REC, MS_REMOUNT, mount)

MOUNT_POINT = "/mnt/data"
TMP = "/tmp"  # where the scratch directory is bound, unless a policy path lives under it
_TMP_FALLBACKS = ("/.tmp",)  # a name no host path has
_ASSEMBLY_DIRS = ("/mnt", "/media", "/srv", "/opt", "/var", "/home", "/tmp")  # where the tree is built
_OLD = ".old-root"
_PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41}
_MNT_DETACH = 2
_ST_TO_MS = {os.ST_RDONLY: MS_RDONLY, os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC,
             os.ST_NOATIME: 1 << 10, os.ST_NODIRATIME: 1 << 11, os.ST_RELATIME: 1 << 21}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def pivot_root(new_root: str, put_old: str) -> None:
    if _libc.syscall(_PIVOT_ROOT_NR.get(os.uname().machine, 155), new_root.encode(), put_old.encode()) != 0:
        raise _fail(f"pivot_root({new_root}, {put_old})")


def detach(path: str) -> None:
    if _libc.umount2(path.encode(), _MNT_DETACH) != 0:
        raise _fail(f"umount2({path}, MNT_DETACH)")


def _beneath(path: str, dirs: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def _bind(source: str, target: str, writable: bool) -> None:
    """Bind the file or directory `source` at `target`. The remount keeps the flags the source
    mount already has (a user namespace may add flags to a mount it did not make, never drop them);
    device nodes keep their devices (no MS_NODEV), and writes to a char device pass a read-only
    mount anyway."""
    mode = os.stat(source).st_mode
    os.makedirs(target if stat.S_ISDIR(mode) else os.path.dirname(target), mode=0o755, exist_ok=True)
    if not stat.S_ISDIR(mode):
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    kept = sum(ms for st, ms in _ST_TO_MS.items() if os.statvfs(target).f_flag & st)
    flags = kept | MS_NOSUID | (0 if writable else MS_RDONLY) | (0 if stat.S_ISCHR(mode) else MS_NODEV)
    mount(None, target, None, MS_BIND | MS_REMOUNT | flags)


def _assembly_dir(needed: list[str]) -> str:
    """A directory to mount the new tree on that covers none of the paths it needs."""
    for candidate in _ASSEMBLY_DIRS:
        if os.path.isdir(candidate) and not os.path.islink(candidate) and not any(
                _beneath(path, [candidate]) or _beneath(candidate, [path]) for path in needed):
            return candidate
    raise OSError(f"no directory to build the sandbox's root in: each of {', '.join(_ASSEMBLY_DIRS)} holds a path it needs")


def scratch_point(binds: list[str]) -> str:
    """Where the scratch directory goes: /tmp, unless a bound path lies under it (an interpreter
    or a venv under /tmp: the scratch mount would hide it), then the first free fallback."""
    for point in (TMP, *_TMP_FALLBACKS):
        if not any(_beneath(path, [point]) or _beneath(point, [path]) for path in binds):
            return point
    raise OSError(f"no free place for the scratch directory: {TMP} and {', '.join(_TMP_FALLBACKS)} hold bound paths")


def enter(binds: list[str], links: dict[str, str], workdir: str, scratch: str) -> str:
    """As PID 1 of the sandbox's PID namespace, holding every capability over its own mount
    namespace: build the tree, pivot into it, detach the host's. Returns where the scratch
    directory is ($TMPDIR inside). Raises OSError naming the step."""
    binds = sorted({path for path in binds if os.path.exists(path)})
    binds = [path for i, path in enumerate(binds) if not _beneath(path, binds[:i])]  # seen through a parent
    # 1. nothing propagates back to the host; the tree lives on a tmpfs of this namespace, mounted
    #    where it covers none of its sources
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    new = _assembly_dir(binds + [workdir, scratch])
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    # 2. the policy's paths read-only at their host paths, the container's own directories writable
    for path in binds:
        _bind(path, new + path, writable=False)
    _bind(workdir, new + MOUNT_POINT, writable=True)
    tmp = scratch_point(binds)
    _bind(scratch, new + tmp, writable=True)
    for path, target in sorted(links.items()):
        if not _beneath(path, binds) and not os.path.lexists(new + path):
            os.makedirs(os.path.dirname(new + path), mode=0o755, exist_ok=True)
            os.symlink(target, new + path)
    # 3. a /proc of this PID namespace only, mounted while the host's is still here to vouch for it
    os.mkdir(new + "/proc", 0o555)
    mount("proc", new + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # 4. pivot, then detach the host's tree: after this no host path resolves, by any name
    _pivot(new)
    mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    return tmp


def _pivot(new: str) -> None:
    os.mkdir(f"{new}/{_OLD}", 0o700)
    os.chdir(new)
    pivot_root(".", _OLD)
    os.chdir("/")
    detach("/" + _OLD)
    os.rmdir("/" + _OLD)


def try_pivot() -> None:
    """What the probe tries in a throwaway child that holds a user and mount namespace: an empty
    tmpfs root, pivot_root, detach. Raises OSError naming the step that failed."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    new = _assembly_dir([])
    mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    _pivot(new)
