"""One kind of stored object: JSON bodies keyed by (parent_id, id), kept in creation order.

Every table has the same four columns, the same on SQLite and PostgreSQL (`created_at` is 64-bit
on both, from `db.dialect`): `parent_id` ('' for top-level objects; the thread of a message, the response or
conversation of an item), `id`, `created_at` (microseconds, strictly increasing within a process,
so a page of same-second objects still comes back in the order they were made) and `body`, the
API object as JSON text.
"""
from __future__ import annotations

import json
import secrets
import threading
import time

from livecast.services.retrieval.pagination import page
from livecast.services.errors import APIError

_clock_lock = threading.Lock()
_last_us = 0


def now_us() -> int:
    """Wall-clock microseconds, strictly increasing across calls (the ordering key)."""
    global _last_us
    with _clock_lock:
        _last_us = max(_last_us + 1, time.time_ns() // 1000)
        return _last_us


def new_id(prefix: str) -> str:
    """`prefix_` + time-ordered hex + randomness: ids sort in creation order, like ULIDs."""
    return f"{prefix}_{now_us():014x}{secrets.token_hex(6)}"


class Table:
    def __init__(self, db, name: str, what: str) -> None:
        """`name`: the SQL table; `what`: how errors name one object ("response", "thread")."""
        self.db, self.name, self.what = db, name, what
        db.apply([
            f"CREATE TABLE IF NOT EXISTS {name} (parent_id TEXT NOT NULL, id TEXT NOT NULL, "
            f"created_at {db.dialect.int64} NOT NULL, body TEXT NOT NULL, PRIMARY KEY (parent_id, id))",
            f"CREATE INDEX IF NOT EXISTS {name}_order ON {name} (parent_id, created_at)",
            f"CREATE INDEX IF NOT EXISTS {name}_age ON {name} (created_at)"])

    def insert(self, body: dict, parent_id: str = "") -> dict:
        self.insert_many([body], parent_id)
        return body

    def insert_many(self, bodies: list[dict], parent_id: str = "") -> None:
        self.db.executemany(f"INSERT INTO {self.name} (parent_id, id, created_at, body) VALUES (?, ?, ?, ?)",
                            [(parent_id, b["id"], now_us(), json.dumps(b, ensure_ascii=False)) for b in bodies])

    def update(self, body: dict, parent_id: str = "") -> None:
        self.db.execute(f"UPDATE {self.name} SET body = ? WHERE parent_id = ? AND id = ?",
                        (json.dumps(body, ensure_ascii=False), parent_id, body["id"]))

    def get(self, id: str, parent_id: str = "") -> dict | None:
        row = self.db.query_one(f"SELECT body FROM {self.name} WHERE parent_id = ? AND id = ?", (parent_id, id))
        return None if row is None else json.loads(row["body"])

    def require(self, id: str, parent_id: str = "", param: str | None = None) -> dict:
        """The object, or a 404 naming it."""
        body = self.get(id, parent_id)
        if body is None:
            raise APIError(404, f"No {self.what} found with id '{id}'.", param=param, code="not_found")
        return body

    def delete(self, id: str, parent_id: str = "") -> bool:
        return self.db.execute(f"DELETE FROM {self.name} WHERE parent_id = ? AND id = ?", (parent_id, id)) > 0

    def delete_children(self, parent_id: str) -> int:
        return self.db.execute(f"DELETE FROM {self.name} WHERE parent_id = ?", (parent_id,))

    def children(self, parent_id: str) -> list[dict]:
        rows = self.db.query(f"SELECT body FROM {self.name} WHERE parent_id = ? ORDER BY created_at", (parent_id,))
        return [json.loads(r["body"]) for r in rows]

    def count(self, parent_id: str) -> int:
        return self.db.query_one(f"SELECT COUNT(*) AS n FROM {self.name} WHERE parent_id = ?", (parent_id,))["n"]

    def page(self, parent_id: str = "", *, after: str | None = None, before: str | None = None,
             limit: int = 20, order: str = "desc") -> tuple[list[dict], bool]:
        rows, has_more = page(self.db, self.name, "id", "parent_id = ?", [parent_id], after=after, before=before,
                              limit=limit, order=order)
        return [json.loads(r["body"]) for r in rows], has_more

    # -- retention ------------------------------------------------------------------------------
    def sweep_older(self, cutoff_us: int) -> int:
        """Delete objects made before `cutoff_us` (children follow through `delete_orphans`)."""
        return self.db.execute(f"DELETE FROM {self.name} WHERE created_at < ?", (cutoff_us,))

    def sweep_over(self, max_count: int, parent_id: str = "") -> int:
        """Keep the newest `max_count` objects under `parent_id`."""
        edge = self.db.query_one(f"SELECT created_at FROM {self.name} WHERE parent_id = ? "
                                 f"ORDER BY created_at DESC LIMIT 1 OFFSET ?", (parent_id, max_count))
        if edge is None:
            return 0
        return self.db.execute(f"DELETE FROM {self.name} WHERE parent_id = ? AND created_at <= ?",
                               (parent_id, edge["created_at"]))

    def parents_over(self, max_count: int) -> list[str]:
        """The parents holding more than `max_count` children."""
        rows = self.db.query(f"SELECT parent_id FROM {self.name} GROUP BY parent_id HAVING COUNT(*) > ?", (max_count,))
        return [r["parent_id"] for r in rows]

    def delete_orphans(self, parents: list["Table"]) -> int:
        """Children whose parent is in none of `parents` (after the parent was swept)."""
        clauses = " AND ".join(f"parent_id NOT IN (SELECT id FROM {p.name})" for p in parents)
        return self.db.execute(f"DELETE FROM {self.name} WHERE {clauses}")
