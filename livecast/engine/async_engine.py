"""AsyncLLMEngine: one background step loop serving many asyncio consumers.

The event loop never runs model work: `generate` validates and hands the request to the loop
thread through a command queue; the loop thread steps the engine and posts each request's
latest cumulative output into that request's one-slot mailbox (latest wins, nothing is lost
since outputs are cumulative). Abandoning the iterator aborts the request and frees its blocks.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import AsyncIterator

from livecast.driven import Driven, Load
from livecast.engine.config import EngineConfig
from livecast.engine.llm_engine import LLMEngine, QueueFullError
from livecast.engine.request_output import CompletionOutput, RequestOutput
from livecast.engine.sampling_params import BeamSearchParams, SamplingParams

logger = logging.getLogger("livecast.engine")


class _Mailbox:
    """Latest output (or error) for one request, handed from the loop thread to asyncio."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.item: RequestOutput | BaseException | None = None
        self.ready = asyncio.Event()

    def post(self, item) -> None:
        self.loop.call_soon_threadsafe(self._set, item)

    def _set(self, item) -> None:
        if isinstance(self.item, BaseException) or (isinstance(self.item, RequestOutput) and self.item.finished):
            return  # a terminal item is never overwritten
        self.item = item
        self.ready.set()

    async def get(self):
        await self.ready.wait()
        self.ready.clear()
        item, self.item = self.item, None
        if isinstance(item, BaseException):
            raise item
        return item


class AsyncLLMEngine(Driven):
    """The engine behind asyncio: stepped by the device runtime, or by its own thread (see
    livecast.driven), which starts with the first request."""

    thread_name = "llm-engine"

    def __init__(self, engine: LLMEngine, log_stats: bool = True) -> None:
        super().__init__()
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.log_stats = log_stats
        self._commands: deque = deque()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._last_log = time.monotonic()

    @classmethod
    def from_config(cls, config: EngineConfig | None = None, log_stats: bool = True,
                    **kwargs) -> "AsyncLLMEngine":
        """Build the engine on a thread that exits before this returns. A thread that has run
        parallel torch ops keeps an OpenMP pool for as long as it lives, and with more libgomp
        threads than CPUs libgomp stops spinning between parallel regions: every small op of the
        step thread then pays a wake-up (16 SmolLM2 streams on 2 cores: 206 -> 249 tok/s when the
        loading thread is gone)."""
        config = config or EngineConfig(**kwargs)
        built: dict = {}

        def build() -> None:
            try:
                built["engine"] = LLMEngine(config)
            except BaseException as exc:  # re-raised on the caller's thread
                built["error"] = exc

        loader = threading.Thread(target=build, name="llm-engine-load")
        loader.start()
        loader.join()
        if "error" in built:
            raise built["error"]
        return cls(built["engine"], log_stats=log_stats)

    # -- lifecycle ---------------------------------------------------------------------------
    def load(self) -> Load:
        return Load(waiting=bool(self._commands) or self.engine.has_unfinished_requests(),
                    active=self.engine.scheduler.num_running_seqs(),
                    max_step_tokens=self.engine.config.max_num_batched_tokens)

    def _kick(self) -> None:
        if not self.driven_from_outside:
            self.start()
        self.wake()

    def abort_all(self) -> None:
        for request_id in list(self._mailboxes):
            self.abort(request_id)

    def cancel_all(self) -> None:
        self.abort_all()

    async def shutdown(self) -> None:
        """Abort everything in flight and stop the loop thread."""
        self.abort_all()
        if self.driven_from_outside:
            return  # the driver applies the aborts and owns the loop
        await asyncio.get_running_loop().run_in_executor(None, self.stop_thread, 10)

    # -- LoRA adapters -----------------------------------------------------------------------
    async def add_lora(self, name: str, path: str):
        """LLMEngine.add_lora off the event loop (and off the step: it reads the disk)."""
        return await asyncio.to_thread(self.engine.add_lora, name, path)

    async def remove_lora(self, name: str):
        return self.engine.remove_lora(name)

    # -- requests ----------------------------------------------------------------------------
    async def generate(self, prompt: str | list[int], params: SamplingParams | BeamSearchParams,
                       request_id: str, delta: bool = False) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs as they grow; with `delta=True` each output carries only
        the text, tokens and logprobs added since the previous one. Errors in the request
        (bad params, prompt too long, full queue) raise here, before anything is yielded."""
        if request_id in self._mailboxes:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if self.num_waiting() >= self.engine.config.max_waiting:  # queued aborts do not count
            raise QueueFullError("too many requests are waiting")
        if isinstance(prompt, str) or len(prompt) > 4096:  # tokenizing megabytes takes seconds: off the loop
            group = await asyncio.to_thread(self.engine.make_request, request_id, prompt, params)
        else:
            group = self.engine.make_request(request_id, prompt, params)
        if request_id in self._mailboxes:  # taken while this one was being tokenized
            raise ValueError(f"request_id {request_id!r} is already in use")
        mailbox = _Mailbox(asyncio.get_running_loop())
        self._mailboxes[request_id] = mailbox
        self._commands.append(("add", group))
        self._kick()
        sent: dict[int, tuple[int, int, int]] = {}
        finished = False
        try:
            while not finished:
                out: RequestOutput = await mailbox.get()
                finished = out.finished
                yield _delta(out, sent) if delta else out
        finally:
            self._mailboxes.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Abort at any time, from any thread; the request's stream ends with finish_reason 'abort'."""
        self._commands.append(("abort", request_id))
        self._kick()

    def num_waiting(self) -> int:
        return self.engine.num_waiting() + sum(1 for c in list(self._commands) if c[0] == "add")

    def stats(self):
        return self.engine.stats()

    # -- the step ----------------------------------------------------------------------------
    def step(self, token_budget: int | None = None) -> int:
        """Apply queued commands and run one engine step of at most `token_budget` tokens (the
        configured budget when None); 0 when there was nothing to do."""
        self._drain_commands()
        if not self.engine.has_unfinished_requests():
            return 0
        self.engine.set_token_budget(token_budget or self.engine.config.max_num_batched_tokens)
        try:
            outputs = self.engine.step()
        except Exception as exc:  # a failed step fails its requests, never the loop
            logger.exception("engine step failed")
            for request_id in list(self.engine.requests):
                self.engine.abort_request(request_id)
                self._post(request_id, RuntimeError(f"engine step failed: {exc}"))
            return 1
        for out in outputs:
            self._post(out.request_id, out)
        for request_id, error in self.engine.step_errors.items():
            self._post(request_id, ValueError(f"the request failed in the engine step: {error}"))
        self._maybe_log()
        return 1

    def _drain_commands(self) -> None:
        while self._commands:
            kind, arg = self._commands.popleft()
            if kind == "add":
                try:
                    self.engine.enqueue(arg)
                except Exception as exc:
                    self._post(arg.request_id, exc)
            else:
                out = self.engine.abort_request(arg)
                if out is not None:
                    self._post(arg, out)

    def _post(self, request_id: str, item) -> None:
        mailbox = self._mailboxes.get(request_id)
        if mailbox is not None:
            mailbox.post(item)

    def _maybe_log(self) -> None:
        now = time.monotonic()
        if self.log_stats and now - self._last_log >= self.engine.config.stats_interval_s:
            self._last_log = now
            logger.info(self.engine.stats(reset_window=True).log_line())


def _delta(out: RequestOutput, sent: dict[int, tuple[int, int, int]]) -> RequestOutput:
    """Slice each output down to what has not been yielded yet (per output index)."""
    outputs = []
    for o in out.outputs:
        text_n, tok_n, lp_n = sent.get(o.index, (0, 0, 0))
        logprobs = o.logprobs[lp_n:] if o.logprobs is not None else None
        outputs.append(CompletionOutput(o.index, o.text[text_n:], o.token_ids[tok_n:], o.cumulative_logprob,
                                        logprobs, o.finish_reason, o.stop_reason))
        sent[o.index] = (len(o.text), len(o.token_ids), len(o.logprobs or []))
    return replace(out, outputs=outputs)
