"""A real, throwaway PostgreSQL server for the store tests: initdb in a temporary directory, pg_ctl
start on a free 127.0.0.1 port, one fresh database per test that asks, everything removed at stop.

PostgreSQL refuses to run as root, so under root the cluster belongs to the `postgres` OS user
(Debian's package creates it) and the binaries run through `runuser`.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import psycopg

USER = "livecast"
INSTALL_HINT = ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): the store tests run a "
                "real server; `make test` installs Debian's `postgresql` package (apt-get install postgresql)")


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin folder; AssertionError with the install hint if none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        on_path = shutil.which("initdb")
        assert on_path, INSTALL_HINT
        return Path(on_path).parent
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="livecast-pg-"))  # /tmp: the postgres user can reach it
        self.data_dir = self.root / "data"
        self.port = free_port()
        self._count = 0
        self._lock = threading.Lock()

    def _run(self, *args: str) -> None:
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*as_owner, str(self.bin_dir / args[0]), *args[1:]], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, f"{args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"

    def start(self) -> "PostgresServer":
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data_dir), "-A", "trust", "-U", USER, "-E", "UTF8", "--no-sync",
                  "--locale=C")
        # durability off: a test server lives for one session; fsync would dominate on a shared disk
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data_dir} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", "start")
        return self

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        auth = USER if password is None else f"{USER}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        with self._lock:
            self._count += 1
            name = f"store_{self._count}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
