"""The agent store's database: one SQLite file (WAL) behind a small interface a PostgreSQL
backend can implement too.

Every write goes through `transaction()`, so a request that fails half-way leaves nothing
half-written. Modules that own tables pass their DDL at construction (`schema`); SQL stays in
the portable subset (TEXT, INTEGER, REAL, BLOB; JSON stored as TEXT; `?` placeholders).
Generation never runs inside a transaction: callers read, release, generate, then write.
"""
from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence


class Database:
    def __init__(self, path: str | Path, schema: Iterable[str] = ()) -> None:
        """`path`: a file, or ":memory:" (tests). `schema`: CREATE … IF NOT EXISTS statements."""
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # one connection shared by threads under a lock: SQLite serialises writers anyway, and the
        # store's statements are short (no generation ever runs inside one)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._depth = 0
        with self._lock:
            if self.path != ":memory:":
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        self.apply(schema)

    def apply(self, schema: Iterable[str]) -> None:
        """Create tables and indexes (idempotent statements)."""
        with self.transaction():
            for statement in schema:
                self._conn.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator["Database"]:
        """All statements inside commit together or not at all; nests (inner blocks join the outer)."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if outer:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth -= 1
            if outer:
                self._conn.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._lock:
            self._conn.executemany(sql, rows)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(row) for row in self._conn.execute(sql, params).fetchall()]

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(sql, params).fetchone()
        return dict(row) if row is not None else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
