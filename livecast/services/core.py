"""The shell's values, the only ones a room may read from outside itself: the API keys and their
projects (services.projects), the origins allowed to open WebSockets, `Retry-After` and the body
limit. Rooms import this module and never `settings.py`, which composes every room's config and
is imported only by the app, `serve` and the CLI. The defaults live in `ServerSettings` (they are
its flags); this is what the app hands the rooms, on `app.state.shell`, through `deps.get_shell`."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Shell:
    api_keys: Mapping[str, str]  # key -> project; empty: no key needed, every request in `default`
    origins: frozenset[str]  # scheme://host:port, or "*"
    retry_after_s: int
    max_body_bytes: int
