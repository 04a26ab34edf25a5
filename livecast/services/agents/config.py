"""What the agent layer needs (composed into ServerSettings; the CLI flags come from here)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from livecast.services.agents.db import check_store_url


def default_data_dir() -> str:
    """$LIVECAST_DATA_DIR, else the user's data directory (XDG), where the store and files live."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return os.environ.get("LIVECAST_DATA_DIR") or str(Path(base) / "livecast")


@dataclass(slots=True)
class AgentsConfig:
    data_dir: str = field(default_factory=default_data_dir, metadata={
        "help": "where the agent store (SQLite) and uploaded files live (default: $LIVECAST_DATA_DIR or "
                "~/.local/share/livecast)"})
    store_url: str = field(default="", repr=False, metadata={  # repr=False: it may hold a password
        "env": "LIVECAST_STORE_URL",
        "help": "the agent store's database: empty for SQLite in --data-dir, sqlite:///PATH, or "
                "postgresql://USER[:PASSWORD]@HOST:PORT/DB for a store every replica shares (uploaded files "
                "stay in --data-dir, which replicas must then share too) (default: $LIVECAST_STORE_URL)"})
    store_max_age_days: float = field(default=30.0, metadata={
        "flag": "--store-max-age", "help": "stored responses, conversations, assistants, threads and chat "
                                           "completions older than this many days are deleted by the sweeper "
                                           "(0: keep forever)"})
    max_stored_responses: int = field(default=100_000, metadata={
        "help": "keep at most this many stored responses per project (the oldest go first)"})
    max_conversations: int = field(default=10_000, metadata={
        "help": "keep at most this many conversations per project"})
    max_assistants: int = field(default=10_000, metadata={"help": "keep at most this many assistants per project"})
    max_threads: int = field(default=10_000, metadata={"help": "keep at most this many threads per project"})
    max_chat_completions: int = field(default=100_000, metadata={
        "help": "keep at most this many stored chat completions (`store: true`) per project"})
    max_items_per_conversation: int = field(default=10_000, metadata={
        "help": "a conversation (or thread) keeps at most this many items (messages), dropping the oldest"})
    sweep_interval_s: float = field(default=60.0, metadata={"help": "how often the store sweeper runs"})
    max_background: int = field(default=64, metadata={
        "help": "background responses and assistant runs generating at once; more get 503"})
    run_expiry_s: float = field(default=600.0, metadata={
        "help": "an assistant run waiting for tool outputs longer than this expires"})
    mcp_allowed_hosts: str = field(default="", metadata={
        "help": "comma-separated hosts (HOST or HOST:PORT) whose remote MCP servers the Responses `mcp` tool may "
                "reach; * allows any; empty (the default): the mcp tool is off"})
    mcp_timeout_s: float = field(default=30.0, metadata={
        "help": "a remote MCP server's connect plus one list or call must finish within this many seconds"})
    mcp_max_output_bytes: int = field(default=100_000, metadata={
        "help": "an MCP tool's output (and a server's tool list) is cut to this many bytes"})

    def __post_init__(self) -> None:
        if not self.data_dir:
            raise ValueError("data_dir must not be empty")
        check_store_url(self.store_url)
        if self.store_max_age_days < 0:
            raise ValueError(f"store_max_age_days must be >= 0, got {self.store_max_age_days}")
        for name in ("max_stored_responses", "max_conversations", "max_assistants", "max_threads",
                     "max_chat_completions",
                     "max_items_per_conversation", "max_background", "mcp_max_output_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("sweep_interval_s", "run_expiry_s", "mcp_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def mcp_hosts(self) -> frozenset[str]:
        return frozenset(h.strip().lower() for h in self.mcp_allowed_hosts.split(",") if h.strip())
