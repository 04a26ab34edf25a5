"""livecast's paged-attention LLM engine."""
from livecast.engine.config import EngineConfig
from livecast.engine.llm_engine import LLMEngine, QueueFullError
from livecast.engine.request_output import CompletionOutput, RequestOutput
from livecast.engine.sampling_params import BeamSearchParams, SamplingParams

__all__ = ["EngineConfig", "LLMEngine", "QueueFullError", "CompletionOutput", "RequestOutput",
           "SamplingParams", "BeamSearchParams", "LLM", "AsyncLLMEngine"]


def __getattr__(name):
    # the offline and async front-ends import lazily so `import engine` stays light
    if name == "LLM":
        from livecast.engine.llm import LLM
        return LLM
    if name == "AsyncLLMEngine":
        from livecast.engine.async_engine import AsyncLLMEngine
        return AsyncLLMEngine
    raise AttributeError(name)
