"""One kind of stored object: JSON bodies keyed by (parent_id, id), kept in creation order.

Every table has the same five columns, the same on SQLite and PostgreSQL (`created_at` is 64-bit
on both, from `db.dialect`): `parent_id` ('' for top-level objects; the thread of a message, the response or
conversation of an item), `id`, `created_at` (microseconds, strictly increasing within a process,
so a page of same-second objects still comes back in the order they were made), `body`, the
API object as JSON text, and `project` (services.projects), children's too.

A `Table` seen through `scoped(project)` reads, writes and deletes only that project's rows: another
project's object is missing (the same 404). Unscoped (`project` None) is the server's own view, for
retention; routes only ever get scoped ones.
"""
from __future__ import annotations

import copy
import json
import secrets
import threading
import time

from livecast.services.errors import APIError
from livecast.services.projects import DEFAULT_PROJECT
from livecast.services.retrieval.pagination import page

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
        self.project: str | None = None
        db.apply([
            f"CREATE TABLE IF NOT EXISTS {name} (parent_id TEXT NOT NULL, id TEXT NOT NULL, "
            f"created_at {db.dialect.int64} NOT NULL, body TEXT NOT NULL, PRIMARY KEY (parent_id, id))",
            f"CREATE INDEX IF NOT EXISTS {name}_order ON {name} (parent_id, created_at)",
            f"CREATE INDEX IF NOT EXISTS {name}_age ON {name} (created_at)"])
        db.add_column(name, "project", f"TEXT NOT NULL DEFAULT '{DEFAULT_PROJECT}'")  # rows from before projects
        db.apply([f"CREATE INDEX IF NOT EXISTS {name}_by_project ON {name} (project, parent_id, created_at)"])

    def scoped(self, project: str) -> "Table":
        view = copy.copy(self)
        view.project = project
        return view

    def _where(self, where: str, params: tuple) -> tuple[str, tuple]:
        return (where, params) if self.project is None else (f"{where} AND project = ?", (*params, self.project))

    def insert(self, body: dict, parent_id: str = "") -> dict:
        self.insert_many([body], parent_id)
        return body

    def insert_many(self, bodies: list[dict], parent_id: str = "") -> None:
        if self.project is None:
            raise ValueError(f"{self.name}: objects are stored in a project (Table.scoped)")
        rows = [(parent_id, b["id"], now_us(), json.dumps(b, ensure_ascii=False), self.project) for b in bodies]
        self.db.executemany(f"INSERT INTO {self.name} (parent_id, id, created_at, body, project) "
                            f"VALUES (?, ?, ?, ?, ?)", rows)

    def update(self, body: dict, parent_id: str = "") -> None:
        where, params = self._where("parent_id = ? AND id = ?", (parent_id, body["id"]))
        self.db.execute(f"UPDATE {self.name} SET body = ? WHERE {where}",
                        (json.dumps(body, ensure_ascii=False), *params))

    def get(self, id: str, parent_id: str = "") -> dict | None:
        where, params = self._where("parent_id = ? AND id = ?", (parent_id, id))
        row = self.db.query_one(f"SELECT body FROM {self.name} WHERE {where}", params)
        return None if row is None else json.loads(row["body"])

    def require(self, id: str, parent_id: str = "", param: str | None = None) -> dict:
        """The object, or a 404 naming it (also when it belongs to another project)."""
        body = self.get(id, parent_id)
        if body is None:
            raise APIError(404, f"No {self.what} found with id '{id}'.", param=param, code="not_found")
        return body

    def delete(self, id: str, parent_id: str = "") -> bool:
        where, params = self._where("parent_id = ? AND id = ?", (parent_id, id))
        return self.db.execute(f"DELETE FROM {self.name} WHERE {where}", params) > 0

    def delete_children(self, parent_id: str) -> int:
        where, params = self._where("parent_id = ?", (parent_id,))
        return self.db.execute(f"DELETE FROM {self.name} WHERE {where}", params)

    def children(self, parent_id: str) -> list[dict]:
        where, params = self._where("parent_id = ?", (parent_id,))
        rows = self.db.query(f"SELECT body FROM {self.name} WHERE {where} ORDER BY created_at", params)
        return [json.loads(r["body"]) for r in rows]

    def count(self, parent_id: str) -> int:
        where, params = self._where("parent_id = ?", (parent_id,))
        return self.db.query_one(f"SELECT COUNT(*) AS n FROM {self.name} WHERE {where}", params)["n"]

    def page(self, parent_id: str = "", *, after: str | None = None, before: str | None = None,
             limit: int = 20, order: str = "desc") -> tuple[list[dict], bool]:
        where, params = self._where("parent_id = ?", (parent_id,))
        rows, has_more = page(self.db, self.name, "id", where, list(params), after=after, before=before,
                              limit=limit, order=order)
        return [json.loads(r["body"]) for r in rows], has_more

    def projects(self) -> list[str]:
        return [r["project"] for r in self.db.query(f"SELECT DISTINCT project FROM {self.name}")]

    # -- retention ------------------------------------------------------------------------------
    def sweep_older(self, cutoff_us: int) -> int:
        """Delete objects made before `cutoff_us` (children follow through `delete_orphans`)."""
        return self.db.execute(f"DELETE FROM {self.name} WHERE created_at < ?", (cutoff_us,))

    def sweep_over(self, max_count: int, parent_id: str = "") -> int:
        """Keep the newest `max_count` objects under `parent_id` (of this view's project, if scoped)."""
        where, params = self._where("parent_id = ?", (parent_id,))
        edge = self.db.query_one(f"SELECT created_at FROM {self.name} WHERE {where} "
                                 f"ORDER BY created_at DESC LIMIT 1 OFFSET ?", (*params, max_count))
        if edge is None:
            return 0
        return self.db.execute(f"DELETE FROM {self.name} WHERE {where} AND created_at <= ?",
                               (*params, edge["created_at"]))

    def parents_over(self, max_count: int) -> list[str]:
        """The parents holding more than `max_count` children."""
        rows = self.db.query(f"SELECT parent_id FROM {self.name} GROUP BY parent_id HAVING COUNT(*) > ?", (max_count,))
        return [r["parent_id"] for r in rows]

    def delete_orphans(self, parents: list["Table"]) -> int:
        """Children whose parent is in none of `parents` (after the parent was swept)."""
        clauses = " AND ".join(f"parent_id NOT IN (SELECT id FROM {p.name})" for p in parents)
        return self.db.execute(f"DELETE FROM {self.name} WHERE {clauses}")
