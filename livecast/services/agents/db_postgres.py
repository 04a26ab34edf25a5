"""The agent store on a PostgreSQL server (psycopg 3): the interface of `db.Database`, shared by
every replica that opens the same URL.

Connections come from a small bounded pool. A statement outside a transaction borrows one for
itself (autocommit); `transaction()` pins one to the calling thread until the outermost block ends,
so nested blocks join it exactly as on SQLite. Other threads keep reading meanwhile (READ
COMMITTED): they see the transaction's writes once it commits, like another replica would.
Statements arrive with `?` placeholders and are rewritten to psycopg's `%s` once (cached).
"""
from __future__ import annotations

import queue
import re
import threading
from contextlib import contextmanager, suppress
from decimal import Decimal
from functools import lru_cache
from typing import Any, Iterable, Iterator, Sequence

import psycopg
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from livecast.services.agents.db import POSTGRESQL, mask_url

POOL_SIZE = 8  # connections per process: the event loop thread plus the worker threads it hands work to
POOL_WAIT_S = 30.0  # a statement waits this long for a free connection before it fails
CONNECT_TIMEOUT_S = 5  # unless the URL sets connect_timeout: a dead server fails startup, never hangs it
SCHEMA_LOCK = 0x6C697665636173  # pg_advisory_xact_lock key ("livecas"): replicas create tables one at a time

_TOKEN = re.compile(r"'(?:[^']|'')*'|\?|%")


@lru_cache(maxsize=2048)
def to_pyformat(sql: str) -> str:
    """`?` placeholders (outside string literals) → `%s`; a literal `%` → `%%`."""
    return _TOKEN.sub(lambda m: "%s" if m[0] == "?" else "%%" if m[0] == "%" else m[0].replace("%", "%%"), sql)


class _NumericLoader(Loader):
    """NUMERIC (what SUM over BIGINT returns) as int or float, like SQLite: JSON has no Decimal."""

    def load(self, data) -> int | float:
        value = Decimal(bytes(data).decode())
        return int(value) if value == value.to_integral_value() else float(value)


class PostgresDatabase:
    dialect = POSTGRESQL

    def __init__(self, url: str, schema: Iterable[str] = (), pool_size: int = POOL_SIZE) -> None:
        self.url, self.path = url, mask_url(url)  # `path`: what /health and errors show
        self._options = {} if "connect_timeout" in conninfo_to_dict(url) else {"connect_timeout": CONNECT_TIMEOUT_S}
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._local = threading.local()  # .conn: the connection of this thread's open transaction
        self._closed = False
        self._idle.put(self._connect())  # now, so a bad URL fails at startup
        self.apply(schema)

    def _connect(self) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.url, autocommit=True, row_factory=dict_row, **self._options)
        except psycopg.Error as exc:  # libpq's message names host and port, never the password
            raise ConnectionError(f"cannot open the agent store at {self.path}: {exc}".strip()) from None
        conn.adapters.register_loader("numeric", _NumericLoader)
        return conn

    def _acquire(self) -> psycopg.Connection:
        if not self._slots.acquire(timeout=POOL_WAIT_S):
            raise TimeoutError(f"no free connection to {self.path} within {POOL_WAIT_S:.0f} s")
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            try:
                return self._connect()
            except BaseException:
                self._slots.release()
                raise

    def _release(self, conn: psycopg.Connection) -> None:
        if self._closed or conn.broken or conn.closed:  # a dropped connection: the next caller reconnects
            conn.close()
        else:
            self._idle.put(conn)
        self._slots.release()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        pinned = getattr(self._local, "conn", None)
        if pinned is not None:  # inside this thread's transaction
            yield pinned
            return
        conn = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    def apply(self, schema: Iterable[str]) -> None:
        """Create tables and indexes; replicas starting together take turns (IF NOT EXISTS races on
        PostgreSQL's catalogs: two CREATEs of one table can both pass the check)."""
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            for statement in schema:
                self.execute(statement)

    def add_column(self, table: str, column: str, ddl: str) -> None:
        """Add `column` (`ddl`: its type and default) to a table made before it existed; idempotent."""
        with self.transaction():
            self.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
            self.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {ddl}")

    @contextmanager
    def transaction(self) -> Iterator["PostgresDatabase"]:
        """All statements inside commit together or not at all; nests (inner blocks join the outer)."""
        if getattr(self._local, "conn", None) is not None:  # an inner block: the outer one decides
            yield self
            return
        conn = self._acquire()
        self._local.conn = conn
        try:
            conn.execute("BEGIN")
            try:
                yield self
            except BaseException:
                with suppress(psycopg.Error):  # a broken connection has nothing left to roll back
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            self._local.conn = None
            self._release(conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        with self._connection() as conn:
            return conn.execute(to_pyformat(sql), params).rowcount

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._connection() as conn, conn.cursor() as cursor:
            cursor.executemany(to_pyformat(sql), list(rows))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return conn.execute(to_pyformat(sql), params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self._connection() as conn:
            return conn.execute(to_pyformat(sql), params).fetchone()

    def close(self) -> None:
        self._closed = True  # connections still lent out close when they come back
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
