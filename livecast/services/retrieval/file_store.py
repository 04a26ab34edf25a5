"""The Files API's storage: bytes under `data_dir/files/<id>`, metadata in the `files` table.

A file's bytes are written to a temporary name and renamed only once complete and within the
size cap, and its row is inserted after that: a crash mid-upload leaves no file that lists.
Each file belongs to a project (services.projects); a store seen through `scoped(project)` finds
only that project's files, the unscoped one (ingestion) any.
"""
from __future__ import annotations

import copy
import os
import secrets
import time
from pathlib import Path

from livecast.services.errors import APIError
from livecast.services.projects import DEFAULT_PROJECT
from livecast.services.retrieval.pagination import page

MAX_FILES_PAGE = 10000  # OpenAI's files list allows far longer pages than other lists
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


def schema(dialect) -> tuple[str, ...]:
    int64 = dialect.int64  # sizes past 2 GiB, times past 2038
    return (f"""CREATE TABLE IF NOT EXISTS files (
                id TEXT PRIMARY KEY, filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes {int64} NOT NULL,
                created_at {int64} NOT NULL, expires_at {int64})""",
            "CREATE INDEX IF NOT EXISTS files_by_created ON files (created_at, id)")


def add_project(db, table: str) -> None:
    """The `project` column of a retrieval table, added to stores made before projects (their rows:
    `default`), and its index."""
    db.add_column(table, "project", f"TEXT NOT NULL DEFAULT '{DEFAULT_PROJECT}'")
    db.apply([f"CREATE INDEX IF NOT EXISTS {table}_by_project ON {table} (project, created_at)"])


def scope(project: str | None, where: str, params: tuple | list) -> tuple[str, list]:
    """`where` narrowed to `project`'s rows (unchanged when None: the server's own view)."""
    return (where, list(params)) if project is None else (f"{where} AND project = ?", [*params, project])


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}" if prefix == "file" else f"{prefix}_{secrets.token_hex(12)}"


def file_object(row: dict) -> dict:
    """The File object; `expires_at` only where the file expires (OpenAI's document gives it no null)."""
    out = {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
           "filename": row["filename"], "purpose": row["purpose"], "status": "processed"}
    if row["expires_at"] is not None:
        out["expires_at"] = row["expires_at"]
    return out


class FileStore:
    def __init__(self, db, data_dir: str | Path, max_file_bytes: int) -> None:
        self.db, self.max_file_bytes = db, max_file_bytes
        self.project: str | None = None
        self.root = Path(data_dir) / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        db.apply(schema(db.dialect))
        add_project(db, "files")
        for leftover in self.root.glob("*.part"):  # uploads a crash interrupted
            leftover.unlink(missing_ok=True)

    def scoped(self, project: str) -> "FileStore":
        view = copy.copy(self)
        view.project = project
        return view

    def path(self, file_id: str) -> Path:
        return self.root / file_id

    # -- writes: called on a worker thread, the bytes arrive in pieces ---------------------------------
    def begin(self) -> tuple[str, Path]:
        file_id = new_id("file")
        return file_id, self.root / f"{file_id}.part"

    def commit(self, file_id: str, part: Path, filename: str, purpose: str, expires_after: dict | None) -> dict:
        size = part.stat().st_size
        now = int(time.time())
        expires_at = now + int(expires_after["seconds"]) if expires_after else None
        os.replace(part, self.path(file_id))
        row = {"id": file_id, "filename": filename, "purpose": purpose, "bytes": size, "created_at": now,
               "expires_at": expires_at}
        if self.project is None:
            raise ValueError("files are stored in a project (FileStore.scoped)")
        with self.db.transaction():
            self.db.execute("INSERT INTO files (id, filename, purpose, bytes, created_at, expires_at, project) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", (*row.values(), self.project))
        return row

    def delete(self, file_id: str) -> None:
        """Remove the row (inside the caller's transaction) and then the bytes."""
        self.get(file_id)
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.path(file_id).unlink(missing_ok=True)

    # -- reads --------------------------------------------------------------------------------------
    def get(self, file_id: str) -> dict:
        where, params = scope(self.project, "id = ?", (file_id,))
        row = self.db.query_one(f"SELECT * FROM files WHERE {where}", params)
        if row is None or (row["expires_at"] is not None and row["expires_at"] <= time.time()):
            raise APIError(404, f"No such File object: {file_id}", param="file_id", code="not_found")
        return row

    def read(self, file_id: str) -> bytes:
        self.get(file_id)
        try:
            return self.path(file_id).read_bytes()
        except FileNotFoundError:
            raise APIError(404, f"the bytes of file {file_id} are missing from the data directory",
                           param="file_id", code="not_found") from None

    def list(self, purpose: str | None, after: str | None, limit: int, order: str) -> tuple[list[dict], bool]:
        """One page, newest first by default; `after` is the last id of the previous page."""
        where, params = scope(self.project, "(expires_at IS NULL OR expires_at > ?)", [int(time.time())])
        if purpose is not None:
            where, params = where + " AND purpose = ?", params + [purpose]
        return page(self.db, "files", "id", where, params, after=after, before=None, limit=limit, order=order,
                    max_limit=MAX_FILES_PAGE)
