"""Which sandbox layers this kernel supports, found by trying them (in a throwaway child for the
namespaces and the sandbox's own root), so the server can say so at startup and refuse to run code
without them.

The own root (pivot_root into a minimal tree, rootfs.py) is reported like the others but is not
required: where the namespaces work and pivot_root does not (a host whose root is the initramfs,
EINVAL), the sandbox keeps the host's tree in its mount namespace, as before it had its own root,
and the server says so at startup (host paths' metadata is then visible, docs/SECURITY.md).
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from livecast.services.sandbox import landlock, namespaces, rootfs, seccomp

LAYERS = ("namespaces", "root", "landlock", "seccomp")
REQUIRED = ("namespaces", "landlock", "seccomp")


@dataclass(frozen=True, slots=True)
class Support:
    namespaces: bool
    landlock_abi: int
    seccomp: bool
    detail: dict[str, str]
    own_root: bool = False

    @property
    def layers(self) -> tuple[str, ...]:
        have = {"namespaces": self.namespaces, "root": self.namespaces and self.own_root,
                "landlock": self.landlock_abi >= 1, "seccomp": self.seccomp}
        return tuple(layer for layer in LAYERS if have[layer])

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(layer for layer in LAYERS if layer not in self.layers)

    @property
    def missing_required(self) -> tuple[str, ...]:
        return tuple(layer for layer in REQUIRED if layer not in self.layers)

    def describe(self) -> str:
        parts = [f"{layer}: {'yes' if layer in self.layers else 'NO'} ({self.detail[layer]})" for layer in LAYERS]
        return "code interpreter sandbox on " + platform.release() + " — " + "; ".join(parts)


def _in_child(attempt) -> str:
    """Run `attempt` in a forked child; "ok" or what it raised."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        message = b"ok"
        try:
            attempt()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            message = str(exc).encode()[:500]
        os.write(write_fd, message)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        message = f.read().decode(errors="replace")
    os.waitpid(pid, 0)
    return message or "probe child died"


def _enter_namespaces() -> None:
    """unshare every namespace, as the sandbox will (dropping root first)."""
    if os.geteuid() == 0:
        namespaces.become(65534, 65534)
    namespaces.unshare(namespaces.ALL_NAMESPACES)


def _try_own_root() -> None:
    _enter_namespaces()
    namespaces.write_id_maps(os.getuid(), os.getgid())  # files on the new tmpfs need a mapped owner
    rootfs.try_pivot()


def probe() -> Support:
    ns_message = _in_child(_enter_namespaces)
    ns_ok = ns_message == "ok"
    ns_detail = "unprivileged user, PID, network, mount, IPC, UTS and cgroup namespaces" if ns_ok else ns_message
    root_message = _in_child(_try_own_root) if ns_ok else "needs the namespaces"
    root_ok = root_message == "ok"
    root_detail = ("a minimal tree on a tmpfs, pivot_root into it, the host's root detached" if root_ok
                   else f"pivot_root into a tmpfs failed ({root_message}); the host's tree stays in the sandbox's "
                        "mount namespace, so host paths' metadata is visible" if ns_ok else root_message)
    abi = landlock.abi_version()
    ll_detail = f"ABI {abi}" + (" with TCP rules" if abi >= 4 else "") + (" and signal scoping" if abi >= 6 else "") \
        if abi else "not in this kernel or disabled at boot (lsm=)"
    sc_ok = seccomp.supported()
    sc_detail = "BPF deny list" if sc_ok else f"unsupported here ({platform.machine()}, or no CONFIG_SECCOMP)"
    return Support(ns_ok, abi, sc_ok, {"namespaces": ns_detail, "root": root_detail, "landlock": ll_detail,
                                       "seccomp": sc_detail}, own_root=root_ok)
