"""Child side: capture file descriptors 1 and 2 for the length of one call, at the fd level, so
`print`, `os.write(1, …)`, C extensions and subprocesses are all caught, and keep only the first
`limit_bytes` of each (the rest is read and counted, never stored: printing 100 MB costs the
sandbox's own CPU time, not the server's memory).
"""
from __future__ import annotations

import os
import select
import sys
import threading
import time

_DRAIN_S = 0.2  # how long a background writer that still holds the pipe may delay the result


class _Reader(threading.Thread):
    def __init__(self, read_fd: int, limit_bytes: int) -> None:
        super().__init__(daemon=True)
        self.read_fd, self.limit_bytes = read_fd, limit_bytes
        self.kept = bytearray()
        self.total_bytes = 0
        self.stop_at: float | None = None  # set once the call is over

    def run(self) -> None:
        while True:
            # stop_at read once, before select: if the call ends while select waits (the last output
            # written, then stop_at set), the next turn still reads what came — a thread held off the
            # CPU (a container at its cgroup's cpu.max) used to return with the output unread
            stop_at = self.stop_at
            timeout = None if stop_at is None else max(stop_at - time.monotonic(), 0.0)
            ready, _, _ = select.select([self.read_fd], [], [], 0.05 if timeout is None else timeout)
            if not ready:
                if stop_at is not None:
                    return  # a background process still holds the pipe: stop listening to it
                continue
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                return
            self.total_bytes += len(chunk)
            room = self.limit_bytes - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]

    def text(self) -> tuple[str, bool]:
        truncated = self.total_bytes > len(self.kept)
        text = self.kept.decode("utf-8", errors="replace")
        if truncated:
            text += f"\n[output truncated: {self.total_bytes - len(self.kept)} more bytes]"
        return text, truncated


class CallCapture:
    """`with CallCapture(limit) as cap: exec(...)`, then `cap.result()` → (stdout, stderr, truncated)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.readers: list[_Reader] = []

    def __enter__(self) -> "CallCapture":
        for fd in (1, 2):
            read_fd, write_fd = os.pipe()
            os.dup2(write_fd, fd)
            os.close(write_fd)
            reader = _Reader(read_fd, self.limit_bytes)
            reader.start()
            self.readers.append(reader)
        return self

    def __exit__(self, *exc) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # the code closed or broke its own stream
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)  # drops our write ends: the readers see EOF unless a child holds one
        os.close(devnull)
        deadline = time.monotonic() + _DRAIN_S
        for reader in self.readers:
            reader.stop_at = deadline
        for reader in self.readers:
            reader.join()
            os.close(reader.read_fd)

    def result(self) -> tuple[str, str, bool]:
        (out, out_cut), (err, err_cut) = (r.text() for r in self.readers)
        return out, err, out_cut or err_cut
