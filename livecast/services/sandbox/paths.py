"""What a container may see of the host filesystem: computed once by the server, applied by the
child as Landlock rules (and, for paths under directories its uid cannot traverse, as read-only
bind mounts under a tmpfs, so it sees those paths and nothing else of e.g. /root).

Read-only: the interpreter, the standard library, the shared-library directories, a few device
nodes and /etc files the C library reads, and the files of the allowed distributions and their
dependencies (site-packages itself is only listable). Read/write: the container's own directory.
The same paths, bound at their host paths with the symlinks on the way to them, make up the
sandbox's own root (rootfs.py): nothing else of the host exists in it.
"""
from __future__ import annotations

import os
import re
import stat
import sys
import sysconfig
from dataclasses import dataclass, field
from importlib import metadata

from livecast.services.sandbox import landlock

_SYSTEM_READ = ("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/usr/share/zoneinfo", "/etc/ld.so.cache",
                "/etc/localtime", "/dev/urandom", "/dev/zero")
_SYSTEM_READ_WRITE = ("/dev/null",)


@dataclass(slots=True)
class FsPolicy:
    rules: list[tuple[str, int]] = field(default_factory=list)  # (path, Landlock access mask)
    overlays: dict[str, list[str]] = field(default_factory=dict)  # hidden dir -> paths bound back
    binds: list[str] = field(default_factory=list)  # what the sandbox's own root holds, at the same paths
    links: dict[str, str] = field(default_factory=dict)  # symlinks on the way to them: path -> target

    def to_json(self) -> dict:
        return {"rules": self.rules, "overlays": self.overlays, "binds": self.binds, "links": self.links}


def symlinks_on_the_way(path: str, links: dict[str, str], depth: int = 0) -> None:
    """Add to `links` every symlink met while resolving `path` (/lib -> usr/lib, a venv's bin/python
    -> python3 -> the real interpreter), so the sandbox's root can lay the same names down."""
    parts = [p for p in os.path.abspath(path).split(os.sep) if p]
    current = "/"
    for i, part in enumerate(parts):
        step = os.path.join(current, part)
        if os.path.islink(step) and depth < 40:
            links[step] = os.readlink(step)
            resolved = os.path.normpath(os.path.join(current, links[step]))
            symlinks_on_the_way(os.path.join(resolved, *parts[i + 1:]), links, depth + 1)
            return
        current = step


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    names = []
    for req in dist.requires or ():
        if "extra ==" in req.replace('"', "").replace("'", ""):
            continue  # optional extras are not part of what the package needs to import
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if match:
            names.append(match.group(1))
    return names


def distribution_paths(packages: tuple[str, ...], site_packages: str) -> list[str]:
    """Top-level files and folders in site-packages of `packages` and their dependencies."""
    seen: set[str] = set()
    todo = list(packages)
    tops: set[str] = set()
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name in {re.sub(r"[-_.]+", "-", p).lower() for p in packages}:
                raise ValueError(f"allowed package {name!r} is not installed in {sys.prefix}") from None
            continue  # a dependency behind an environment marker that does not apply here
        todo += _requirement_names(dist)
        for file in dist.files or ():
            parts = file.parts
            if parts and parts[0] not in ("..", "__pycache__") and not parts[0].endswith(".pth"):
                tops.add(parts[0])
    return sorted(os.path.join(site_packages, top) for top in tops
                  if os.path.exists(os.path.join(site_packages, top)))


def can_traverse(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _hidden_ancestor(path: str, uid: int, gid: int) -> str | None:
    parts = os.path.realpath(path).split(os.sep)[1:-1]
    current = "/"
    for part in parts:
        current = os.path.join(current, part)
        if not can_traverse(current, uid, gid):
            return current
    return None


def build_policy(packages: tuple[str, ...], uid: int, gid: int) -> FsPolicy:
    """The read-only part of a container's view; the bootstrap adds its own directory read/write."""
    paths = sysconfig.get_paths()
    site_packages = paths["purelib"]
    interpreter = os.path.realpath(sys.executable)
    policy = FsPolicy()
    policy.rules.append((interpreter, landlock.READ_EXEC))
    policy.rules.append((os.path.realpath(paths["stdlib"]), landlock.READ_ONLY))
    policy.rules.append((os.path.realpath(site_packages), landlock.READ_DIR))
    policy.rules += [(os.path.realpath(p), landlock.READ_ONLY) for p in distribution_paths(packages, site_packages)]
    policy.rules += [(p, landlock.READ_ONLY) for p in _SYSTEM_READ if os.path.exists(p)]
    policy.rules += [(p, landlock.READ_ONLY | landlock.WRITE_FILE) for p in _SYSTEM_READ_WRITE]
    # dedupe by real path, keeping the widest mask
    merged: dict[str, int] = {}
    for path, mask in policy.rules:
        real = os.path.realpath(path)
        merged[real] = merged.get(real, 0) | mask
    policy.rules = sorted(merged.items())
    policy.binds = [path for path, mask in policy.rules if mask != landlock.READ_DIR]  # site-packages: only its allowed tops
    for path in (sys.executable, paths["stdlib"], site_packages) + _SYSTEM_READ + _SYSTEM_READ_WRITE:
        symlinks_on_the_way(path, policy.links)
    for path, _ in policy.rules:
        hidden = _hidden_ancestor(path if not os.path.isdir(path) else os.path.join(path, "x"), uid, gid)
        if hidden is not None:
            binds = policy.overlays.setdefault(hidden, [])
            if not any(path == b or path.startswith(b + "/") for b in binds):  # seen through its parent
                binds.append(path)
    return policy
