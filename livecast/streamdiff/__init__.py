"""Real-time diffusion on diffusers components: StreamDiffusion's techniques plus multi-stream
batching. `StreamPipeline` serves one stream; `StreamBatcher` serves many in shared batches."""
from .batcher import FrameDropped, StreamBatcher, StreamStats
from .config import StreamParams
from .pipeline import StreamPipeline

__all__ = ["FrameDropped", "StreamBatcher", "StreamParams", "StreamPipeline", "StreamStats"]
