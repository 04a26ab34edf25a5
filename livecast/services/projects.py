"""Projects, as OpenAI has them: every API key belongs to one project, every stored object
(responses, conversations, assistants, threads, files, vector stores, containers) to the project
of the key that made it, and a key sees, runs in and deletes only its own project's objects.

The guard (services.auth) resolves the request's key to its project once, before any route runs,
and leaves it in the ASGI scope; routes take it as a typed dependency, `project: Project`. An
object of another project answers the same 404 as a missing one (never 403), so ids do not leak.

Keys come from `--api-keys FILE`, one key a line:

    # KEY PROJECT
    sk-alpha-1 proj_a
    sk-beta-1  proj_b

(blank lines and `#` comments are skipped; a project may have several keys). The single
`--api-key` is one more key, of project `default`; with no key at all every request is in
`default`, so objects stored before projects existed stay where they were.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from livecast.services.errors import APIError

DEFAULT_PROJECT = "default"
SCOPE_KEY = "livecast.project"  # where the guard leaves the request's project in the ASGI scope
_PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MIN_KEY_CHARS = 8


def read_api_keys(path: str | Path) -> dict[str, str]:
    """key -> project from a keys file; ValueError naming the file and line of the first fault."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"api_keys: cannot read {path}: {exc}") from None
    keys: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"api_keys {path}, line {number}"
        if len(words) != 2:
            raise ValueError(f"{where}: expected `KEY PROJECT` (two words), got {len(words)} word(s)")
        key, project = words
        if len(key) < MIN_KEY_CHARS:
            raise ValueError(f"{where}: the key is shorter than {MIN_KEY_CHARS} characters")
        if not _PROJECT_NAME.fullmatch(project):
            raise ValueError(f"{where}: project {project!r} must be 1-64 letters, digits, '_', '.' or '-', "
                             f"starting with a letter or digit")
        if key in keys:
            raise ValueError(f"{where}: the key of line {lines[key]} again (a key belongs to one project)")
        keys[key], lines[key] = project, number
    if not keys:  # an empty file must never open the server
        raise ValueError(f"api_keys {path}: no keys (one `KEY PROJECT` a line)")
    return keys


def key_projects(api_key: str | None, api_keys_file: str | None) -> dict[str, str]:
    """Every key the server accepts and its project: the file's, plus `api_key` in `default`.
    Empty: no key is required and every request is in `default`."""
    keys = read_api_keys(api_keys_file) if api_keys_file else {}
    if api_key is not None:
        if keys.get(api_key, DEFAULT_PROJECT) != DEFAULT_PROJECT:
            raise ValueError(f"api_key is also in {api_keys_file}, for project {keys[api_key]!r}; "
                             f"the single key is project {DEFAULT_PROJECT!r}")
        keys[api_key] = DEFAULT_PROJECT
    return keys


def current_project(conn: HTTPConnection) -> str:
    """The project of the request's key, as the guard found it."""
    project = conn.scope.get(SCOPE_KEY)
    if project is None:  # only an app built without services.auth.APIKeyGuard gets here
        raise APIError(500, "no project for this request: the app runs without its key guard", code="server_error")
    return project


Project = Annotated[str, Depends(current_project)]  # a route's `project: Project`
