"""Server settings: one slotted dataclass, built by `livecast serve` or by a test, validated once."""
from __future__ import annotations

from dataclasses import dataclass

from engine import EngineConfig


@dataclass(slots=True)
class ServerSettings:
    """Everything `create_app` needs. Each component copies the fields it uses.

    `enable_llm` / `enable_diffusion` switch whole sides of the server: a disabled side builds
    no engine in the lifespan, mounts no routers and reports `null` in /health.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # when set, every route but /health and /metrics needs `Bearer <key>`
    max_body_bytes: int = 4 << 20
    enable_llm: bool = True
    enable_diffusion: bool = True

    # -- LLM side ------------------------------------------------------------------------------
    model: str | None = None  # None → SmolLM2-135M-Instruct
    served_model_name: str | None = None  # the `model` clients send; defaults to the engine's name
    dtype: str = "auto"
    kv_cache_memory: int | None = None  # bytes; None → the engine's default
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    max_model_len: int | None = None
    max_queue: int = 1024  # waiting requests beyond this get 503 + Retry-After
    grammar_cache_size: int = 64  # compiled xgrammar grammars kept (LRU)
    max_ws_streams: int = 64  # concurrent generations on one WebSocket
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")
        if self.grammar_cache_size < 1:
            raise ValueError(f"grammar_cache_size must be >= 1, got {self.grammar_cache_size}")
        if self.max_ws_streams < 1:
            raise ValueError(f"max_ws_streams must be >= 1, got {self.max_ws_streams}")
        if self.api_key == "":
            self.api_key = None
        # fail at startup, not in the lifespan, on a bad engine setting
        self.engine_config()

    def engine_config(self) -> EngineConfig:
        return EngineConfig(model=self.model, dtype=self.dtype, kv_cache_memory=self.kv_cache_memory,
                            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                            max_model_len=self.max_model_len, max_waiting=self.max_queue)
