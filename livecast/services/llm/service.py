"""The LLM service: one AsyncLLMEngine, its tokenizer, grammars and latency metrics.

`llm_service()` is the lifespan piece that builds and tears it down; routes reach the
`LLMService` through `services.llm.deps.get_llm`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import aclosing, asynccontextmanager
from typing import AsyncIterator

from prometheus_client import CollectorRegistry

from livecast.engine import (
    AsyncLLMEngine,
    EngineConfig,
    LLMEngine,
    QueueFullError,
    RequestOutput,
    SamplingParams,
)
from livecast.engine.lora import LoraAdapter, LoraError, LoraNotFound
from livecast.services.errors import APIError, overloaded
from livecast.services.llm.chat_template import render_chat
from livecast.services.llm.config import LLMConfig
from livecast.services.llm.cot import DemoSet, load_named_sets
from livecast.services.llm.logprobs import TokenTexts
from livecast.services.llm.metrics import EngineCollector, LLMMetrics
from livecast.services.llm.structured import GrammarCache
from livecast.services.runtime.threads import on_own_thread

logger = logging.getLogger("livecast.server")


class LLMService:
    def __init__(self, engine: AsyncLLMEngine, config: LLMConfig, metrics: LLMMetrics, retry_after_s: int = 1,
                 cot_demos: dict[str, DemoSet] | None = None) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.token_texts = TokenTexts(self.tokenizer)
        core = engine.engine
        self.model_name = config.served_model_name or core.model_name
        self.max_model_len = core.max_model_len
        self.vocab_size = core.hf_config.vocab_size
        self.retry_after_s = retry_after_s
        self.max_ws_streams = config.max_ws_streams
        self.max_ws_connections, self.max_prompts = config.max_ws_connections, config.max_prompts
        self.ws_connections = 0  # open /v1/ws/generate sockets
        self.created = int(time.time())
        self.metrics = metrics
        self.grammars = GrammarCache(self.tokenizer, self.vocab_size, sorted(core.eos_token_ids),
                                     config.grammar_cache_size)
        self.cot_demos = cot_demos or {}  # the `cot` field's named demo sets (--cot-demos), by name
        # where `store: true` chat completions go: the agents room sets it (services.agents.chat_completions);
        # .save(project, completion, request messages, metadata)
        self.completion_store = None
        self.lora_dir = config.lora_dir

    # -- models: the base and its LoRA adapters ------------------------------------------------------
    @property
    def loras(self) -> dict[str, LoraAdapter]:
        """The adapters loaded now, by name (the engine's; read only)."""
        return self.engine.engine.loras

    def resolve_model(self, model: str | None) -> str | None:
        """The LoRA adapter a request's `model` names, or None for the base model (also when no
        `model` was sent); any other name is a 404 model_not_found. Every generating route calls
        this and puts the result in its SamplingParams' `lora`."""
        if model is None or model == self.model_name:
            return None
        if model in self.loras:
            return model
        raise model_not_found(model)

    def served_name(self, lora: str | None) -> str:
        """The `model` a response echoes: the adapter's name when one was used (as vLLM does)."""
        return lora or self.model_name

    async def load_lora(self, name: str, path: str) -> LoraAdapter:
        """Load a PEFT adapter folder at run time (parsed off the event loop). The folder must lie
        inside --lora-dir (403 otherwise); a bad adapter is a 400 naming the problem, and nothing
        already loaded changes."""
        if name == self.model_name:
            raise APIError(400, f"lora_name {name!r} is the base model's name", param="lora_name")
        if name in self.loras:
            raise APIError(400, f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        folder = self._adapter_folder(path)
        try:
            return await self.engine.add_lora(name, folder)
        except LoraError as exc:
            raise APIError(400, str(exc), param="lora_name" if name in self.loras else "lora_path") from exc

    async def unload_lora(self, name: str) -> LoraAdapter:
        """Running requests on the adapter finish with it; new ones naming it get 404s."""
        try:
            return await self.engine.remove_lora(name)
        except LoraNotFound:
            raise model_not_found(name, param="lora_name") from None

    def _adapter_folder(self, path: str) -> str:
        """`path` resolved (symlinks too; relative to --lora-dir), refused unless inside --lora-dir:
        the route reads server-side paths, so without the fence any key holder could probe the disk."""
        if self.lora_dir is None:
            raise APIError(403, "loading LoRA adapters at run time is off on this server; start it with "
                                "--lora-dir DIR (the folder adapters must live in) to allow it",
                           param="lora_path", type="permission_error", code="lora_loading_disabled")
        if "\0" in path:
            raise APIError(400, "lora_path must not contain a NUL character", param="lora_path")
        root = os.path.realpath(self.lora_dir)
        folder = os.path.realpath(os.path.join(root, path))
        if os.path.commonpath([root, folder]) != root:
            raise APIError(403, f"lora_path {path!r} is outside this server's --lora-dir", param="lora_path",
                           type="permission_error", code="lora_path_not_allowed")
        return folder

    # -- prompts -------------------------------------------------------------------------------
    async def encode_chat(self, messages: list[dict], tools: list[dict] | None = None,
                          add_generation_prompt: bool = True) -> list[int]:
        """`chat_prompt_ids` off the event loop (a long conversation takes a while to render and tokenize)."""
        return await asyncio.to_thread(self.chat_prompt_ids, messages, tools, add_generation_prompt)

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens=add_special_tokens)

    def chat_prompt_ids(self, messages: list[dict], tools: list[dict] | None = None,
                        add_generation_prompt: bool = True) -> list[int]:
        text = render_chat(self.tokenizer, messages, tools, add_generation_prompt)
        # the template already wrote the special tokens it wants
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = False) -> str:
        if any(not 0 <= t < self.vocab_size for t in token_ids):
            raise APIError(400, f"token ids must be in [0, {self.vocab_size})", param="tokens")
        return self.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    # -- generation ------------------------------------------------------------------------------
    async def open_stream(self, prompt: str | list[int], params: SamplingParams,
                          request_id: str) -> AsyncIterator[RequestOutput]:
        """Start a request and wait for its first output, so that a bad request or a full queue
        raises APIError here, before any response is sent. The returned iterator yields delta
        outputs (new text/tokens only); closing it early aborts the request and frees its blocks."""
        stream = self._generate(prompt, params, request_id)
        try:
            first = await anext(stream)
        except BaseException:
            await stream.aclose()
            raise
        return _prepend(first, stream)

    async def _generate(self, prompt, params, request_id) -> AsyncIterator[RequestOutput]:
        start = time.monotonic()
        last_token_time = None
        started = finished = False
        try:
            async with aclosing(self.engine.generate(prompt, params, request_id, delta=True)) as stream:
                async for out in stream:
                    num_new = out.num_generated_tokens
                    if num_new:
                        now = time.monotonic()
                        if last_token_time is None:  # the engine stamps its first token (same clock)
                            first = (out.metrics and out.metrics.first_token_time) or now
                            self.metrics.time_to_first_token.observe(first - start)
                            last_token_time, num_new = min(first, now), num_new - 1
                        for _ in range(num_new):  # tokens that arrive together share the gap
                            self.metrics.inter_token_latency.observe((now - last_token_time) / num_new)
                        last_token_time = now
                    started = True
                    if out.finished:
                        finished = True
                        self.metrics.e2e_latency.observe(time.monotonic() - start)
                        for o in out.outputs:
                            self.metrics.requests_finished.labels(o.finish_reason or "unknown").inc()
                    yield out
        except LoraNotFound as exc:  # unloaded after the route resolved it
            raise model_not_found(params.lora) from exc
        except QueueFullError as exc:
            self.metrics.requests_rejected.inc()
            raise overloaded(f"the server is overloaded ({exc}); retry later", self.retry_after_s) from exc
        except ValueError as exc:  # the engine validates before yielding anything (or fails the request alone)
            raise APIError.bad_request(exc) from exc
        finally:
            if started and not finished:  # the client went away (closing the stream aborted it), or it failed
                self.metrics.requests_finished.labels("abort").inc()

    def health(self) -> dict:
        stats = self.engine.stats()
        engine = self.engine.engine
        return {"model": self.model_name, "healthy": not self.engine.errored, "demo": False,
                "device": str(engine.device), "dtype": str(engine.dtype).removeprefix("torch."),
                "quantization": engine.quantization, "quantization_detail": engine.quantization_detail,
                "max_model_len": self.max_model_len, "running": stats.num_running,
                "waiting": stats.num_waiting, "kv_cache_usage": stats.kv_cache_usage,
                "speculative": None if engine.speculator is None else getattr(  # the draft proposer names its model
                    engine.speculator.proposer, "name", engine.config.speculative)}


def model_not_found(model: str | None, param: str = "model") -> APIError:
    return APIError(404, f"The model `{model}` does not exist.", param=param, code="model_not_found")


async def _prepend(first: RequestOutput, rest: AsyncIterator[RequestOutput]) -> AsyncIterator[RequestOutput]:
    async with aclosing(rest):
        yield first
        if not first.finished:
            async for out in rest:
                yield out


@asynccontextmanager
async def llm_service(engine_config: EngineConfig, config: LLMConfig, registry: CollectorRegistry,
                      retry_after_s: int = 1) -> AsyncIterator[LLMService]:
    """Build the engine (on a thread that exits: loading weights is seconds of CPU), serve, shut down."""
    try:  # before the engine: a bad demo file should stop startup at once, not after loading weights
        cot_demos = load_named_sets(config.cot_demo_specs())
    except ValueError as exc:
        raise ValueError(f"cannot load --cot-demos: {exc}") from None
    engine = AsyncLLMEngine(await on_own_thread(LLMEngine, engine_config))  # see on_own_thread
    clash = config.served_model_name or engine.engine.model_name
    if clash in engine.engine.loras:  # a request naming it could not tell adapter and base apart
        await engine.shutdown()
        raise ValueError(f"--lora-modules: adapter {clash!r} has the served model's name")
    metrics = LLMMetrics(registry)
    service = LLMService(engine, config, metrics, retry_after_s, cot_demos)
    collector = EngineCollector(engine.stats)
    registry.register(collector)
    logger.info("serving %s (max_model_len %d)", service.model_name, service.max_model_len)
    if cot_demos:
        logger.info("cot demo sets: %s", ", ".join(f"{n} ({len(s.demos)} demos)" for n, s in cot_demos.items()))
    try:
        yield service
    finally:
        registry.unregister(collector)
        metrics.close()
        await engine.shutdown()
