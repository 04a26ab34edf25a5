"""Server settings: the app shell's own fields plus each room's config, composed (never copied).

Every default is written once, in the dataclass that owns it: EngineConfig (engine), LLMConfig
(the LLM service), MediaConfig (media), RuntimePolicy and MemoryConfig (the device runtime),
AgentsConfig, SandboxConfig and RetrievalConfig (agents), ScaleConfig (replicas on Ray Serve).
`livecast serve` builds its flags from these fields (services.serve).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from livecast.engine import EngineConfig
from livecast.services.agents.config import AgentsConfig
from livecast.services.retrieval.config import RetrievalConfig
from livecast.services.sandbox.config import SandboxConfig
from livecast.services.llm.config import LLMConfig
from livecast.services.media.config import MediaConfig
from livecast.services.runtime.memory import MemoryConfig
from livecast.services.runtime.policy import RuntimePolicy
from livecast.services.core import Shell
from livecast.services.projects import key_projects
from livecast.services.scale.config import ScaleConfig


@dataclass(slots=True)
class ServerSettings:
    """Everything `create_app` needs. `enable_llm` / `enable_diffusion` switch whole rooms: a
    disabled room builds no engine in the lifespan, mounts no routes and reports `null` in /health."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    api_key: str | None = field(default=None, metadata={
        "env": "LIVECAST_API_KEY",
        "help": "require `Authorization: Bearer KEY` on every route but /health and /metrics "
                "(default: $LIVECAST_API_KEY, else none); its objects are in project `default`"})
    api_keys: str | None = field(default=None, metadata={
        "env": "LIVECAST_API_KEYS",
        "help": "a file of API keys and their projects, one `KEY PROJECT` a line (# comments); a key sees only "
                "its project's stored objects (default: $LIVECAST_API_KEYS, else none)"})
    max_body_bytes: int = field(default=4 << 20, metadata={
        "flag": "--max-body-mb", "unit": "MiB", "help": "larger request bodies get 413"})
    retry_after_s: int = field(default=1, metadata={"help": "Retry-After seconds on every 503"})
    allowed_origins: str = field(default="", metadata={
        "help": "comma-separated origins (scheme://host:port) whose pages may open this server's WebSockets, "
                "besides its own; * allows any"})
    enable_llm: bool = field(default=True, metadata={"flag": "--no-llm", "help": "do not load the LLM"})
    enable_diffusion: bool = field(default=True, metadata={
        "flag": "--no-diffusion", "help": "do not load the diffusion pipeline"})
    enable_agents: bool = field(default=True, metadata={
        "flag": "--no-agents", "help": "do not serve the Responses, Conversations and Assistants APIs"})
    engine: EngineConfig = field(default_factory=EngineConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    diffusion: MediaConfig = field(default_factory=MediaConfig)
    runtime: RuntimePolicy = field(default_factory=RuntimePolicy)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    agents: AgentsConfig = field(default_factory=AgentsConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    # key -> project, read from `api_key` and the `api_keys` file once, here (a bad file fails startup)
    key_projects: dict[str, str] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")
        if self.api_key == "":
            self.api_key = None
        self.key_projects = key_projects(self.api_key, self.api_keys or None)

    @property
    def origins(self) -> set[str]:
        return {o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()}

    def shell(self) -> Shell:
        """The values the rooms may read (services.core), apart from every room's config."""
        return Shell(dict(self.key_projects), frozenset(self.origins), self.retry_after_s, self.max_body_bytes)

    # the rooms, in the order the CLI lists their flags
    SECTIONS = {"LLM engine": "engine", "LLM service": "llm", "diffusion": "diffusion",
                "shared device runtime": "runtime", "memory plan": "memory", "agents": "agents",
                "code interpreter": "sandbox", "retrieval": "retrieval", "scale-out (Ray Serve)": "scale"}
