"""Server side: a container's files, as OpenAI's `container.file` objects, and safe access to them.

The working directory belongs to the sandbox uid, so whatever is in it may be a trap: a symlink
to /etc/shadow, a directory swapped for a link between our check and our open. Every access
here walks the path one component at a time with O_NOFOLLOW from a directory fd, so it cannot
leave the working directory, and reads are bounded in size.
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass

MOUNT_POINT = "/mnt/data"  # where the code sees its working directory
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg", ".bmp")
MAX_ENTRIES = 10_000  # a scan stops here: a million empty files must not stall the server
MAX_DEPTH = 64  # and does not go deeper: a tree 1,200 levels deep must not break the server
logger = logging.getLogger("livecast.sandbox")


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
        """As the code sees it; a name that is not UTF-8 shows U+FFFD where its bytes were (the
        file itself is still found by `relpath`, which keeps them)."""
        return f"{MOUNT_POINT}/{display_name(self.relpath)}"

    @property
    def name(self) -> str:
        return display_name(self.relpath.rsplit("/", 1)[-1])

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


class ScanResult(dict):
    """relpath -> (bytes, mtime_ns); `truncated` says why the scan stopped early, if it did."""
    truncated: str | None = None


def scan(workdir: str, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH) -> ScanResult:
    """relpath -> (bytes, mtime_ns) of the regular files under `workdir`, links not followed.

    Iterative (a stack of directory fds, at most `max_depth` deep — never Python recursion, which
    a tree 1,200 levels deep exhausts), every directory opened with O_NOFOLLOW from its parent's
    fd, and bounded: past `max_entries` entries or below `max_depth` levels the scan stops and
    says so in `truncated` instead of failing. Names are kept as the OS gives them (undecodable
    bytes as surrogates); `display_name` turns them into valid text."""
    found = ScanResult()
    seen = 0
    root_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    stack: list[tuple[int, str, os.DirEntry | None]] = []
    try:
        stack.append((root_fd, "", os.scandir(root_fd)))
        while stack:
            dir_fd, prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                entries.close()
                stack.pop()
                if dir_fd != root_fd:
                    os.close(dir_fd)
                continue
            seen += 1
            if seen > max_entries:
                found.truncated = f"more than {max_entries} entries"
                break
            relpath = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if len(stack) >= max_depth:
                        found.truncated = found.truncated or f"directories nested deeper than {max_depth} levels"
                        continue
                    child_fd = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                       dir_fd=dir_fd)
                    try:
                        child_entries = os.scandir(child_fd)
                    except OSError:
                        os.close(child_fd)
                        raise
                    stack.append((child_fd, relpath + "/", child_entries))
                    continue
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone or swapped meanwhile, or unreadable: not a file of ours
            if stat.S_ISREG(st.st_mode):
                found[relpath] = (st.st_size, st.st_mtime_ns)
    finally:
        for dir_fd, _, entries in stack:
            entries.close()
            if dir_fd != root_fd:
                os.close(dir_fd)
        os.close(root_fd)
    return found


def display_name(relpath: str) -> str:
    """A path as valid text: bytes that are not UTF-8 (kept as surrogates) become U+FFFD."""
    return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class IncompleteRemoval(OSError):
    """A directory tree could not be removed completely; what is left is named."""


def remove_tree(path: str) -> None:
    """Remove `path` and everything under it, however deep, without following links, or raise
    IncompleteRemoval. shutil.rmtree recurses (a tree 1,200 levels deep raises RecursionError
    half-way) and its error handling is all or nothing; this walks with one directory fd at a
    time, going down by name (O_NOFOLLOW) and up through "..", checked against the inode it came
    from, so a directory moved meanwhile stops the removal instead of leading it elsewhere.
    Meant for trees no process writes to any more (the container is killed first)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    st = os.fstat(fd)
    identities = [(st.st_dev, st.st_ino)]  # of the directories from `path` down to the current one
    names: list[str] = []
    failed: set[tuple[int, int, str]] = set()  # (dev, ino of the directory, name): not retried
    try:
        while True:
            child = None
            with os.scandir(fd) as entries:
                for entry in entries:
                    key = (*identities[-1], entry.name)
                    if key in failed:
                        continue
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                            dir_fd=fd)
                            names.append(entry.name)
                            break
                        os.unlink(entry.name, dir_fd=fd)
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        failed.add(key)
                        logger.warning("cannot remove %r under %s: %s", entry.name, path, exc)
            if child is not None:
                os.close(fd)
                fd = child
                st = os.fstat(fd)
                identities.append((st.st_dev, st.st_ino))
                continue
            if not names:
                break
            parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            st = os.fstat(parent)
            os.close(fd)
            fd = parent
            identities.pop()
            if (st.st_dev, st.st_ino) != identities[-1]:
                raise IncompleteRemoval(f"{path}: a directory moved during removal")
            name = names.pop()
            try:
                os.rmdir(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed.add((*identities[-1], name))
                logger.warning("cannot remove directory %r under %s: %s", name, path, exc)
    finally:
        os.close(fd)
    if failed:
        raise IncompleteRemoval(f"{path}: {len(failed)} entries could not be removed")
    os.rmdir(path)


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
        self.truncated: str | None = None  # why the last scan stopped early, if it did

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
        self.truncated = current.truncated
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
