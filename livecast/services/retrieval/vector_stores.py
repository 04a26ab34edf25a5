"""Vector stores, the files in them and file batches: rows, API objects and their rules.

A store file goes in as `in_progress` and leaves ingestion `completed` (its chunks committed in
the same transaction) or `failed` with `last_error` (and no chunks). Expiry is computed from
`last_active_at`, which searches move forward. Ingestion itself lives in `ingest.py`; this
module hands it (store id, file id) pairs through `enqueue`. A store belongs to a project
(services.projects): seen through `scoped(project)`, another project's store is missing, and so
are its files and batches, and only that project's Files can be added.
"""
from __future__ import annotations

import copy
import json
import time
from typing import Callable

from livecast.services.errors import APIError
from livecast.services.retrieval.chunking import ChunkingStrategy
from livecast.services.retrieval.file_store import add_project, new_id, scope
from livecast.services.retrieval.pagination import page

STATUSES = ("in_progress", "completed", "failed", "cancelled")
MAX_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS = 16, 64, 512


def schema(dialect) -> tuple[str, ...]:
    int64 = dialect.int64  # byte counts past 2 GiB, times past 2038
    return (f"""CREATE TABLE IF NOT EXISTS vector_stores (
                id TEXT PRIMARY KEY, name TEXT, metadata TEXT NOT NULL, created_at {int64} NOT NULL,
                last_active_at {int64} NOT NULL, expires_after TEXT)""",
            f"""CREATE TABLE IF NOT EXISTS vector_store_files (
                vector_store_id TEXT NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
                file_id TEXT NOT NULL, batch_id TEXT, status TEXT NOT NULL, last_error TEXT,
                attributes TEXT NOT NULL, chunking_strategy TEXT NOT NULL, usage_bytes {int64} NOT NULL,
                created_at {int64} NOT NULL, PRIMARY KEY (vector_store_id, file_id))""",
            "CREATE INDEX IF NOT EXISTS vector_store_files_by_file ON vector_store_files (file_id)",
            f"""CREATE TABLE IF NOT EXISTS vector_stores_file_batches (
                id TEXT PRIMARY KEY, vector_store_id TEXT NOT NULL REFERENCES vector_stores (id) ON DELETE CASCADE,
                created_at {int64} NOT NULL)""")


def check_attributes(value, param: str, strings_only: bool = False) -> dict:
    """OpenAI's limits on `metadata` (string values) and `attributes` (strings, numbers, booleans)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_KEYS:
        raise APIError(400, f"{param} must be an object with at most {MAX_KEYS} keys", param=param)
    kinds = (str,) if strings_only else (str, int, float, bool)
    for key, item in value.items():
        if len(key) > MAX_KEY_CHARS:
            raise APIError(400, f"{param}: key {key[:20]!r}… is longer than {MAX_KEY_CHARS} characters", param=param)
        if not isinstance(item, kinds) or (isinstance(item, str) and len(item) > MAX_VALUE_CHARS):
            allowed = "a string" if strings_only else "a string, number or boolean"
            raise APIError(400, f"{param}.{key} must be {allowed} (strings up to {MAX_VALUE_CHARS} characters)",
                           param=f"{param}.{key}")
    return value


def check_expires_after(value) -> dict | None:
    if value is None:
        return None
    if (not isinstance(value, dict) or value.get("anchor") != "last_active_at"
            or not isinstance(value.get("days"), int) or not 1 <= value["days"] <= 365):
        raise APIError(400, "expires_after must be {\"anchor\": \"last_active_at\", \"days\": 1..365}",
                       param="expires_after")
    return {"anchor": "last_active_at", "days": value["days"]}


def _chunking(value) -> ChunkingStrategy:
    try:
        return ChunkingStrategy.from_request(value)
    except ValueError as exc:
        raise APIError(400, str(exc), param="chunking_strategy") from None


class VectorStores:
    def __init__(self, db, files, index, enqueue: Callable[[str, str], None]) -> None:
        self.db, self.files, self.index, self.enqueue = db, files, index, enqueue
        self.project: str | None = None
        db.apply(schema(db.dialect))
        add_project(db, "vector_stores")

    def scoped(self, project: str) -> "VectorStores":
        view = copy.copy(self)
        view.project, view.files = project, self.files.scoped(project)
        return view

    # -- stores -------------------------------------------------------------------------------------
    def create(self, name: str | None, metadata: dict | None, expires_after: dict | None,
               file_ids: list[str], chunking_strategy: dict | None) -> dict:
        metadata = check_attributes(metadata, "metadata", strings_only=True)
        expires_after, chunking = check_expires_after(expires_after), _chunking(chunking_strategy)
        store_id, now = new_id("vs"), int(time.time())
        if self.project is None:
            raise ValueError("vector stores are made in a project (VectorStores.scoped)")
        with self.db.transaction():
            self.db.execute("INSERT INTO vector_stores (id, name, metadata, created_at, last_active_at, expires_after, "
                            "project) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (store_id, name, json.dumps(metadata), now, now,
                             json.dumps(expires_after) if expires_after else None, self.project))
            added = [self._attach(store_id, f, {}, chunking, None) for f in file_ids]
        for file_id in added:
            self.enqueue(store_id, file_id)
        return self.get(store_id)

    def row(self, store_id: str) -> dict:
        where, params = scope(self.project, "id = ?", (store_id,))
        row = self.db.query_one(f"SELECT * FROM vector_stores WHERE {where}", params)
        if row is None:
            raise APIError(404, f"No such vector store: {store_id}", param="vector_store_id", code="not_found")
        return row

    def get(self, store_id: str) -> dict:
        return self.store_object(self.row(store_id))

    def list(self, after, before, limit, order) -> tuple[list[dict], bool]:
        where, params = scope(self.project, "1 = 1", [])
        rows, more = page(self.db, "vector_stores", "id", where, params, after=after, before=before,
                          limit=limit, order=order)
        return [self.store_object(r) for r in rows], more

    def update(self, store_id: str, fields: dict) -> dict:
        row = self.row(store_id)
        name = fields.get("name", row["name"])
        if name is not None and not isinstance(name, str):
            raise APIError(400, "name must be a string", param="name")
        metadata = json.loads(row["metadata"])
        if "metadata" in fields:
            metadata = check_attributes(fields["metadata"], "metadata", strings_only=True)
        expires = row["expires_after"]
        if "expires_after" in fields:
            checked = check_expires_after(fields["expires_after"])
            expires = json.dumps(checked) if checked else None
        with self.db.transaction():
            self.db.execute("UPDATE vector_stores SET name = ?, metadata = ?, expires_after = ?, last_active_at = ? "
                            "WHERE id = ?", (name, json.dumps(metadata), expires, int(time.time()), store_id))
        return self.get(store_id)

    def delete(self, store_id: str) -> None:
        self.row(store_id)
        with self.db.transaction():
            self.index.delete(store_id)
            self.db.execute("DELETE FROM vector_store_files WHERE vector_store_id = ?", (store_id,))
            self.db.execute("DELETE FROM vector_stores_file_batches WHERE vector_store_id = ?", (store_id,))
            self.db.execute("DELETE FROM vector_stores WHERE id = ?", (store_id,))

    def touch(self, store_id: str) -> dict:
        """A store about to be searched: 400 if it has expired, else its activity clock moves on."""
        row = self.row(store_id)
        if self._expires_at(row) is not None and self._expires_at(row) <= time.time():
            raise APIError(400, f"vector store {store_id} has expired", param="vector_store_id", code="expired")
        self.db.execute("UPDATE vector_stores SET last_active_at = ? WHERE id = ?", (int(time.time()), store_id))
        return row

    @staticmethod
    def _expires_at(row: dict) -> int | None:
        if not row["expires_after"]:
            return None
        return row["last_active_at"] + json.loads(row["expires_after"])["days"] * 86400

    def file_counts(self, where: str, params: tuple) -> dict:
        counts = {s: 0 for s in STATUSES}
        for r in self.db.query(f"SELECT status, COUNT(*) AS n FROM vector_store_files WHERE {where} GROUP BY status",
                               params):
            counts[r["status"]] = r["n"]
        return {**counts, "total": sum(counts.values())}

    def store_object(self, row: dict) -> dict:
        counts = self.file_counts("vector_store_id = ?", (row["id"],))
        expires_at = self._expires_at(row)
        usage = self.db.query_one("SELECT COALESCE(SUM(usage_bytes), 0) AS n FROM vector_store_files "
                                  "WHERE vector_store_id = ?", (row["id"],))["n"]
        status = ("expired" if expires_at is not None and expires_at <= time.time()
                  else "in_progress" if counts["in_progress"] else "completed")
        # an unnamed store's name is "" (OpenAI's document requires a string)
        out = {"id": row["id"], "object": "vector_store", "created_at": row["created_at"], "name": row["name"] or "",
               "usage_bytes": usage, "file_counts": counts, "status": status, "expires_at": expires_at,
               "last_active_at": row["last_active_at"], "metadata": json.loads(row["metadata"])}
        if row["expires_after"]:  # optional, not nullable, in OpenAI's document
            out["expires_after"] = json.loads(row["expires_after"])
        return out

    # -- files in a store -----------------------------------------------------------------------------------
    def _attach(self, store_id: str, file_id: str, attributes: dict, chunking: ChunkingStrategy,
                batch_id: str | None) -> str:
        """Insert an in_progress row (inside the caller's transaction); returns the file id."""
        if not isinstance(file_id, str):
            raise APIError(400, "file_id must be a string", param="file_id")
        self.files.get(file_id)
        exists = self.db.query_one("SELECT 1 FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
                                   (store_id, file_id))
        if exists is not None:
            raise APIError(400, f"file {file_id} is already in vector store {store_id}", param="file_id",
                           code="duplicate_file")
        self.db.execute(
            "INSERT INTO vector_store_files (vector_store_id, file_id, batch_id, status, last_error, attributes, "
            "chunking_strategy, usage_bytes, created_at) VALUES (?, ?, ?, 'in_progress', NULL, ?, ?, 0, ?)",
            (store_id, file_id, batch_id, json.dumps(attributes), json.dumps(chunking.to_dict()), int(time.time())))
        return file_id

    def add_file(self, store_id: str, file_id: str, attributes: dict | None, chunking_strategy: dict | None) -> dict:
        self.row(store_id)
        attributes, chunking = check_attributes(attributes, "attributes"), _chunking(chunking_strategy)
        with self.db.transaction():
            self._attach(store_id, file_id, attributes, chunking, None)
        self.enqueue(store_id, file_id)
        return self.get_file(store_id, file_id)

    def file_row(self, store_id: str, file_id: str) -> dict:
        self.row(store_id)
        row = self.db.query_one("SELECT * FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
                                (store_id, file_id))
        if row is None:
            raise APIError(404, f"No file {file_id} in vector store {store_id}", param="file_id", code="not_found")
        return row

    def get_file(self, store_id: str, file_id: str) -> dict:
        return file_object(self.file_row(store_id, file_id))

    def list_files(self, store_id: str, status: str | None, batch_id: str | None, after, before, limit,
                   order) -> tuple[list[dict], bool]:
        self.row(store_id)
        where, params = "vector_store_id = ?", [store_id]
        if status is not None:
            if status not in STATUSES:
                raise APIError(400, f"filter must be one of {list(STATUSES)}, not {status!r}", param="filter")
            where, params = where + " AND status = ?", params + [status]
        if batch_id is not None:
            where, params = where + " AND batch_id = ?", params + [batch_id]
        rows, more = page(self.db, "vector_store_files", "file_id", where, params, after=after, before=before,
                          limit=limit, order=order)
        return [file_object(r) for r in rows], more

    def update_file(self, store_id: str, file_id: str, attributes: dict | None) -> dict:
        self.file_row(store_id, file_id)
        attributes = check_attributes(attributes, "attributes")
        self.db.execute("UPDATE vector_store_files SET attributes = ? WHERE vector_store_id = ? AND file_id = ?",
                        (json.dumps(attributes), store_id, file_id))
        return self.get_file(store_id, file_id)

    def remove_file(self, store_id: str, file_id: str) -> None:
        """Take a file out of a store: its chunks leave search in the same transaction."""
        self.file_row(store_id, file_id)
        with self.db.transaction():
            self.index.delete(store_id, file_id)
            self.db.execute("DELETE FROM vector_store_files WHERE vector_store_id = ? AND file_id = ?",
                            (store_id, file_id))

    def stores_holding(self, file_id: str) -> list[str]:
        return [r["vector_store_id"] for r in self.db.query(
            "SELECT vector_store_id FROM vector_store_files WHERE file_id = ?", (file_id,))]

    # -- batches ---------------------------------------------------------------------------------------------
    def create_batch(self, store_id: str, entries: list[tuple[str, dict | None, dict | None]]) -> dict:
        """`entries`: (file_id, attributes, chunking_strategy) for each file; all or none are added."""
        self.row(store_id)
        if not entries:
            raise APIError(400, "file_ids must not be empty", param="file_ids")
        checked = [(f, check_attributes(a, "attributes"), _chunking(c)) for f, a, c in entries]
        batch_id, now = new_id("vsfb"), int(time.time())
        with self.db.transaction():
            self.db.execute("INSERT INTO vector_stores_file_batches (id, vector_store_id, created_at) VALUES (?, ?, ?)",
                            (batch_id, store_id, now))
            added = [self._attach(store_id, f, a, c, batch_id) for f, a, c in checked]
        for file_id in added:
            self.enqueue(store_id, file_id)
        return self.get_batch(store_id, batch_id)

    def get_batch(self, store_id: str, batch_id: str) -> dict:
        self.row(store_id)
        row = self.db.query_one("SELECT * FROM vector_stores_file_batches WHERE id = ? AND vector_store_id = ?",
                                (batch_id, store_id))
        if row is None:
            raise APIError(404, f"No file batch {batch_id} in vector store {store_id}", param="batch_id",
                           code="not_found")
        counts = self.file_counts("batch_id = ?", (batch_id,))
        status = ("in_progress" if counts["in_progress"] else "cancelled" if counts["cancelled"]
                  else "failed" if counts["failed"] == counts["total"] else "completed")
        return {"id": batch_id, "object": "vector_store.files_batch", "created_at": row["created_at"],
                "vector_store_id": store_id, "status": status, "file_counts": counts}

    def cancel_batch(self, store_id: str, batch_id: str) -> dict:
        """Files not yet indexed stop: ingestion sees `cancelled` at commit and writes nothing."""
        self.get_batch(store_id, batch_id)
        self.db.execute("UPDATE vector_store_files SET status = 'cancelled' WHERE batch_id = ? AND status = 'in_progress'",
                        (batch_id,))
        return self.get_batch(store_id, batch_id)


def file_object(row: dict) -> dict:
    return {"id": row["file_id"], "object": "vector_store.file", "usage_bytes": row["usage_bytes"],
            "created_at": row["created_at"], "vector_store_id": row["vector_store_id"], "status": row["status"],
            "last_error": json.loads(row["last_error"]) if row["last_error"] else None,
            "chunking_strategy": json.loads(row["chunking_strategy"]),
            "attributes": json.loads(row["attributes"])}
