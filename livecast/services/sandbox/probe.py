"""Which sandbox layers this kernel supports, found by trying them (in a throwaway child for the
namespaces), so the server can say so at startup and refuse to run code without them.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from livecast.services.sandbox import landlock, namespaces, seccomp

LAYERS = ("namespaces", "landlock", "seccomp")


@dataclass(frozen=True, slots=True)
class Support:
    namespaces: bool
    landlock_abi: int
    seccomp: bool
    detail: dict[str, str]

    @property
    def layers(self) -> tuple[str, ...]:
        have = {"namespaces": self.namespaces, "landlock": self.landlock_abi >= 1, "seccomp": self.seccomp}
        return tuple(layer for layer in LAYERS if have[layer])

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(layer for layer in LAYERS if layer not in self.layers)

    def describe(self) -> str:
        parts = [f"{layer}: {'yes' if layer in self.layers else 'NO'} ({self.detail[layer]})" for layer in LAYERS]
        return "code interpreter sandbox on " + platform.release() + " — " + "; ".join(parts)


def _try_namespaces() -> tuple[bool, str]:
    """unshare every namespace in a forked child, as the sandbox will (dropping root first)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        message = b"ok"
        try:
            if os.geteuid() == 0:
                namespaces.become(65534, 65534)
            namespaces.unshare(namespaces.ALL_NAMESPACES)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            message = str(exc).encode()[:500]
        os.write(write_fd, message)
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        message = f.read().decode(errors="replace")
    os.waitpid(pid, 0)
    if message == "ok":
        return True, "unprivileged user, PID, network, mount, IPC, UTS and cgroup namespaces"
    return False, message or "probe child died"


def probe() -> Support:
    ns_ok, ns_detail = _try_namespaces()
    abi = landlock.abi_version()
    ll_detail = f"ABI {abi}" + (" with TCP rules" if abi >= 4 else "") + (" and signal scoping" if abi >= 6 else "") \
        if abi else "not in this kernel or disabled at boot (lsm=)"
    sc_ok = seccomp.supported()
    sc_detail = "BPF deny list" if sc_ok else f"unsupported here ({platform.machine()}, or no CONFIG_SECCOMP)"
    return Support(ns_ok, abi, sc_ok, {"namespaces": ns_detail, "landlock": ll_detail, "seccomp": sc_detail})
