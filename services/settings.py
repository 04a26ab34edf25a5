"""Server settings: one slotted dataclass, built by `livecast serve` or by a test, validated once."""
from __future__ import annotations

from dataclasses import dataclass

from engine import EngineConfig
from services.runtime import RuntimePolicy
from services.diffusion import DiffusionConfig


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
    jump_forward: bool = True  # grammar-forced text appended without sampling
    max_num_batched_tokens: int = 1024
    max_model_len: int | None = None
    max_queue: int = 1024  # waiting requests beyond this get 503 + Retry-After
    grammar_cache_size: int = 64  # compiled xgrammar grammars kept (LRU)
    max_ws_streams: int = 64  # concurrent generations on one WebSocket
    retry_after_s: int = 1

    # -- diffusion side ------------------------------------------------------------------------
    diffusion_model: str = "demo"  # "demo", "sd-turbo-shape", a diffusers folder or hub id
    diffusion_device: str | None = None  # None → cuda if available, else cpu
    diffusion_dtype: str = "auto"
    diffusion_resolution: int | None = None  # working side in pixels; None → the model's
    max_video_sessions: int = 4  # WebRTC sessions; the next offer gets 503
    max_frame_clients: int = 16  # /v1/ws/frames sockets
    latency_probe: bool = False  # stamp input frame ids on WebRTC output (livecast bench webrtc)
    ice_loopback: bool = False  # offer only 127.0.0.1 as WebRTC candidate (same-machine clients)

    # -- the shared device runtime ---------------------------------------------------------------
    frame_deadline_ms: float = 66.0  # a waiting video frame is processed before it is this late
    video_share: float = 0.4  # device time video gets while the LLM also has work
    video_llm_tokens: int = 64  # LLM token budget per step while video streams are live
    memory_budget: int | None = None  # bytes for both engines on a CPU host; sizes the KV cache
    diffusion_memory: int | None = None  # bytes the diffusion side needs in that plan; None: estimated

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
        for name in ("memory_budget", "diffusion_memory", "kv_cache_memory"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 bytes, got {getattr(self, name)}")
        if self.api_key == "":
            self.api_key = None
        # fail at startup, not in the lifespan, on a bad engine setting
        self.engine_config()
        self.diffusion_config()
        self.runtime_policy()

    def engine_config(self) -> EngineConfig:
        return EngineConfig(model=self.model, dtype=self.dtype, kv_cache_memory=self.kv_cache_memory,
                            max_num_seqs=self.max_num_seqs, max_num_batched_tokens=self.max_num_batched_tokens,
                            jump_forward=self.jump_forward,
                            max_model_len=self.max_model_len, max_waiting=self.max_queue)

    def diffusion_config(self) -> DiffusionConfig:
        return DiffusionConfig(model=self.diffusion_model, device=self.diffusion_device, dtype=self.diffusion_dtype,
                               resolution=self.diffusion_resolution, max_video_sessions=self.max_video_sessions,
                               max_frame_clients=self.max_frame_clients, latency_probe=self.latency_probe,
                               ice_loopback=self.ice_loopback, drive_batcher=False)

    def runtime_policy(self) -> RuntimePolicy:
        return RuntimePolicy(frame_deadline_ms=self.frame_deadline_ms, video_share=self.video_share,
                             video_llm_token_budget=self.video_llm_tokens)
