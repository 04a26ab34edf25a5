"""The retrieval room's settings: every default once, the flags `livecast serve` builds from them."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class RetrievalConfig:
    data_dir: str = ""  # files go under data_dir/files; the app sets it from AgentsConfig.data_dir
    max_file_bytes: int = field(default=512 * 1024 * 1024, metadata={  # OpenAI's cap per file
        "flag": "--max-file-mb", "unit": "MiB", "help": "larger uploads to /v1/files get 413"})
    embedding_model: str | None = field(default=None, metadata={
        "help": "embedding model folder; none turns embeddings off (default: the packaged all-MiniLM-L6-v2)"})
    device: str = "cpu"
    ingestion_concurrency: int = field(default=8, metadata={  # small files only batch well together
        "help": "files being ingested into vector stores at once"})
    max_batch_inputs: int = 64  # texts per embedding model call
    max_queued_inputs: int = 8192  # texts waiting for the embedder before callers get a 503
    batcher_thread: bool = True  # False: the device runtime steps `service.batcher` (runtime.others)

    def __post_init__(self) -> None:
        if self.max_file_bytes < 1:
            raise ValueError("max_file_bytes must be positive")
        if not 1 <= self.ingestion_concurrency <= 64:
            raise ValueError("ingestion_concurrency must be in 1..64")
        if not 1 <= self.max_batch_inputs <= self.max_queued_inputs:
            raise ValueError("need 1 <= max_batch_inputs <= max_queued_inputs")
