"""Server side: a container's files, as OpenAI's `container.file` objects, and safe access to them.

The working directory belongs to the sandbox uid, so whatever is in it may be a trap: a symlink
to /etc/shadow, a directory swapped for a link between our check and our open. Every access
here walks the path one component at a time with O_NOFOLLOW from a directory fd, so it cannot
leave the working directory, and reads are bounded in size.
"""
from __future__ import annotations

import os
import secrets
import stat
import time
from dataclasses import dataclass

MOUNT_POINT = "/mnt/data"  # where the code sees its working directory
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp")
_MAX_ENTRIES = 10_000  # a scan stops here: a million empty files must not stall the server


@dataclass(slots=True)
class ContainerFile:
    id: str
    relpath: str
    bytes: int
    created_at: int
    source: str  # "user" (uploaded) or "assistant" (written by code)
    mtime_ns: int = 0

    @property
    def path(self) -> str:
        return f"{MOUNT_POINT}/{self.relpath}"

    @property
    def is_image(self) -> bool:
        return self.relpath.lower().endswith(IMAGE_SUFFIXES)

    def to_openai(self, container_id: str) -> dict:
        return {"id": self.id, "object": "container.file", "created_at": self.created_at, "bytes": self.bytes,
                "container_id": container_id, "path": self.path, "source": self.source}


def check_name(name: str) -> str:
    """An uploaded file's name: one path component, as clients send `file.filename`."""
    name = os.path.basename(name or "")
    if name in ("", ".", "..") or "\0" in name or len(name.encode()) > 255:
        raise ValueError(f"invalid file name {name!r}")
    return name


def scan(workdir: str) -> dict[str, tuple[int, int]]:
    """relpath -> (bytes, mtime_ns) of the regular files under `workdir`, links not followed."""
    found: dict[str, tuple[int, int]] = {}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(workdir, followlinks=False):
        for name in filenames:
            seen += 1
            if seen > _MAX_ENTRIES:
                return found
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found[os.path.relpath(full, workdir)] = (st.st_size, st.st_mtime_ns)
    return found


def _open_beneath(workdir: str, relpath: str, flags: int, mode: int = 0o600) -> int:
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"invalid container path {relpath!r}")
    dir_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def read_beneath(workdir: str, relpath: str, max_bytes: int) -> bytes:
    fd = _open_beneath(workdir, relpath, os.O_RDONLY | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang us
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{relpath!r} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"{relpath!r} is larger than {max_bytes} bytes")
    return data


def write_beneath(workdir: str, relpath: str, data: bytes, uid: int, gid: int) -> None:
    fd = _open_beneath(workdir, relpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            f.write(data)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def unlink_beneath(workdir: str, relpath: str) -> None:
    parent, _, name = relpath.rpartition("/")
    dir_fd = _open_beneath(workdir, parent, os.O_RDONLY | os.O_DIRECTORY) if parent else \
        os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.unlink(name, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


class FileIndex:
    """The files a container has, keyed by path; ids stay stable while a path keeps existing."""

    def __init__(self) -> None:
        self.by_path: dict[str, ContainerFile] = {}

    def record(self, relpath: str, size: int, mtime_ns: int, source: str) -> ContainerFile:
        file = self.by_path.get(relpath)
        if file is None:
            file = ContainerFile(f"cfile_{secrets.token_hex(12)}", relpath, size, int(time.time()), source, mtime_ns)
            self.by_path[relpath] = file
        file.bytes, file.mtime_ns = size, mtime_ns
        return file

    def sync(self, workdir: str) -> list[ContainerFile]:
        """Pick up what the code wrote; return the files new or changed since the last sync."""
        current = scan(workdir)
        for gone in set(self.by_path) - set(current):
            del self.by_path[gone]
        changed = []
        for relpath, (size, mtime_ns) in sorted(current.items()):
            known = self.by_path.get(relpath)
            if known is None or (known.bytes, known.mtime_ns) != (size, mtime_ns):
                changed.append(self.record(relpath, size, mtime_ns, "assistant"))
        return changed

    def get(self, file_id: str) -> ContainerFile | None:
        return next((f for f in self.by_path.values() if f.id == file_id), None)

    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.by_path.values())
