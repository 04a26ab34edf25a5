"""What the LLM service needs beyond the engine's own config (composed into ServerSettings)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class LLMConfig:
    served_model_name: str | None = field(default=None, metadata={
        "help": "the model name clients send (default: --model)"})
    grammar_cache_size: int = field(default=64, metadata={"help": "compiled grammars kept (LRU)"})
    max_ws_streams: int = field(default=64, metadata={"help": "concurrent generations on one WebSocket"})
    max_ws_connections: int = field(default=256, metadata={"help": "open /v1/ws/generate sockets at most"})
    max_prompts: int = field(default=64, metadata={"help": "prompts one /v1/completions request may carry"})
    cot_demos: str = field(default="", metadata={
        "help": "comma-separated NAME=PATH demo sets for the `cot` request field (hand-written or from "
                "livecast cot build)"})
    lora_dir: str | None = field(default=None, metadata={
        "help": "folder runtime-loaded adapters must live in; unset: /v1/load_lora_adapter is refused"})

    def __post_init__(self) -> None:
        if self.grammar_cache_size < 1:
            raise ValueError(f"grammar_cache_size must be >= 1, got {self.grammar_cache_size}")
        for name in ("max_ws_streams", "max_ws_connections", "max_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def cot_demo_specs(self) -> list[str]:
        """`cot_demos` as the NAME=PATH strings `load_named_sets` takes."""
        return [spec.strip() for spec in self.cot_demos.split(",") if spec.strip()]
