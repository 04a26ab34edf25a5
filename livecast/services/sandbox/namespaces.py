"""Linux namespaces, mounts and capabilities through libc, for Python 3.11 (no `os.unshare`).

The child bootstrap calls these in order: `hide_directories` (root only), `become(uid)` (root only: an unprivileged uid outside,
so the user namespace's owner holds nothing on the host), `unshare(ALL_NAMESPACES)`,
`write_id_maps`, fork (the first child is PID 1 of the new PID namespace), then in that child the
mounts, and `drop_capabilities` before any untrusted code runs.
"""
from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080
ALL_NAMESPACES = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
                  | CLONE_NEWCGROUP)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 1 << 18

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_LAST = 63  # past CAP_LAST_CAP of any kernel; PR_CAPBSET_DROP says EINVAL beyond the real one

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(_libc.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def become(uid: int, gid: int) -> None:
    """From root to `uid`/`gid` with no supplementary groups. Changing uid clears the dumpable
    flag, which would make /proc/self/uid_map root's: set it back so we can write our own maps."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl(PR_SET_DUMPABLE, 1)


def write_id_maps(uid: int, gid: int) -> None:
    """Map our own outside ids to the same ids inside: one id each, so nothing else is ours."""
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1\n")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1\n")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def bind_readonly(source: str, target: str) -> None:
    # a bind mount takes the source's flags; read-only needs a second, remounting call
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def hide_directories(overlays: dict[str, list[str]]) -> None:
    """As root, before the uid changes, in a mount namespace of our own: a tmpfs over each
    directory the sandbox uid may not traverse (e.g. /root, which holds a pyenv interpreter),
    with the paths it needs bound back read-only. The user namespace created next inherits
    these mounts locked: the code cannot unmount them to see what they cover."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    for hidden, paths in overlays.items():
        fds = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in paths]
        mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
        for path, fd in fds:
            _make_mountpoint(path, is_dir=os.path.isdir(f"/proc/self/fd/{fd}"))
            bind_readonly(f"/proc/self/fd/{fd}", path)
            os.close(fd)


def setup_mounts(workdir: str) -> None:
    """As PID 1 of the new PID namespace, in the user namespace's mount namespace: nothing
    propagates back to the host, /proc shows only the sandbox's processes, and the working
    directory appears at /mnt/data as in OpenAI's containers."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("tmpfs", "/mnt", "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    os.mkdir("/mnt/data", 0o700)
    mount(workdir, "/mnt/data", None, MS_BIND | MS_NOSUID | MS_NODEV)


def _make_mountpoint(path: str, is_dir: bool) -> None:
    os.makedirs(path if is_dir else os.path.dirname(path), mode=0o755, exist_ok=True)
    if not is_dir:
        open(path, "a").close()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets. The user namespace
    gave us every capability over its own namespaces; user code needs none of them."""
    for cap in range(_CAP_LAST + 1):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 and ctypes.get_errno() == 22:
            break  # EINVAL: past the kernel's last capability
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def set_hostname(name: str) -> None:
    _check(_libc.sethostname(name.encode(), len(name)), "sethostname")


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)
