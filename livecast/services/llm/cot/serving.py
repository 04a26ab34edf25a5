"""Chain-of-Thought requests on the running server: `run_cot` over `LLMService.open_stream`.

Every generation of a CoT request (the rationale stage with its n chains, Kojima's answer stage)
is an ordinary engine request through `open_stream`, so latency metrics, queue limits and
disconnect-aborts apply as to any completion, and demo prefixes hit the prefix cache. Used by
the chat and completions routes (`cot.route`) and reusable by any other route:

    result = await run_request_cot(llm, spec, question, params, chat=True)    # → CotResult
    call = CotCall(llm, spec, question, params, chat=True, system=[...])      # streaming:
    await call.start()                                                        # HTTP errors here
    async with aclosing(call.events()) as events:                             # rationale deltas,
        async for reasoning_delta, result in events: ...                      # then the result
"""
from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

import regex

from livecast.engine import SamplingParams
from livecast.services.errors import APIError
from livecast.services.llm.cot import CotError, CotResult, CotSpec, run_cot
from livecast.services.llm.cot.answers import _ANSWER_MARKER
from livecast.services.llm.cot.prompts import Prompt, needs_answer_stage
from livecast.services.llm.service import LLMService

# the answer marker of `split_rationale_answer`, able to report a marker cut off by the end of
# the text so far ("… The ans"): `regex` supports partial matches, `re` does not
_MARKER = regex.compile(_ANSWER_MARKER.pattern, regex.IGNORECASE)
# the start of the "\nA:" label that `split_rationale_answer` drops from the end of a rationale
_PARTIAL_LABEL = regex.compile(r"(?:^|\n)\s*[A-Z]:?$")


def invalid_cot(exc: CotError) -> APIError:
    return APIError(400, str(exc), param=exc.param, code="invalid_cot")


@dataclass(slots=True)
class Completion:
    """One finished chain as `run_cot` reads it (`.text`, `.token_ids`), plus why it ended."""
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None


class StreamGenerate:
    """`run_cot`'s generate function over `LLMService.open_stream`.

    Chat prompts (message lists) are rendered with the model's chat template after the request's
    own `system` messages. Counts every prompt and generated token, keeps the rationale stage's
    chains (the first call `run_cot` makes) and reports their growing text to `on_rationale`
    (chain index, text so far): a plain callback, so a slow client never stalls the engine."""

    def __init__(self, llm: LLMService, request_id: str | None = None, system: Sequence[dict] = (),
                 on_rationale: Callable[[int, str], None] | None = None) -> None:
        self.llm, self.system, self.on_rationale = llm, list(system), on_rationale
        self.request_id = request_id or f"cot-{uuid.uuid4().hex}"
        self.num_prompt_tokens = self.num_output_tokens = 0
        self.rationale_chains: list[Completion] = []
        self.opened = asyncio.Event()  # the rationale request was admitted and produced its first output
        self._num_calls = 0

    async def __call__(self, prompt: Prompt, params: SamplingParams) -> list[Completion]:
        call, self._num_calls = self._num_calls, self._num_calls + 1
        if isinstance(prompt, list):
            prompt = await self.llm.encode_chat([*self.system, *prompt])
        stream = await self.llm.open_stream(prompt, params, f"{self.request_id}-{call}")
        chains = [Completion(i) for i in range(params.n)]
        if call == 0:
            self.rationale_chains = chains
            self.opened.set()
        counted_prompt = False
        async with aclosing(stream):
            async for out in stream:  # delta outputs: only the new text and tokens
                if not counted_prompt:
                    self.num_prompt_tokens += len(out.prompt_token_ids)
                    counted_prompt = True
                for o in out.outputs:
                    chain = chains[o.index]
                    chain.text += o.text
                    chain.token_ids += o.token_ids
                    chain.finish_reason = o.finish_reason or chain.finish_reason
                    self.num_output_tokens += len(o.token_ids)
                    if call == 0 and o.text and self.on_rationale is not None:
                        self.on_rationale(o.index, chain.text)
        return chains

    def finish_reason(self, result: CotResult) -> str:
        """How the rationale of the chosen chain ended ("stop" or "length")."""
        chosen = next((i for i, c in enumerate(result.chains) if c.answer == result.answer), 0)
        reason = self.rationale_chains[chosen].finish_reason if self.rationale_chains else None
        return reason or "stop"


async def run_request_cot(llm: LLMService, spec: CotSpec, question: str, params: SamplingParams | None = None,
                          chat: bool = True, generate: StreamGenerate | None = None) -> CotResult:
    """One question through `spec` on the server's engine; `params` are the request's (None:
    run_cot's defaults). Bad `cot` fields and demo-set names raise APIError 400 (code invalid_cot)."""
    generate = generate or StreamGenerate(llm)
    try:
        demos = spec.resolve_demos(llm.cot_demos)
        return await run_cot(generate, spec, question, demos, params, chat)
    except CotError as exc:
        raise invalid_cot(exc) from None


class RationaleStream:
    """Turns the growing rationale-stage text into `reasoning_content` deltas whose concatenation
    is exactly the final `CotResult.rationale`.

    With demos the rationale is the text before the last answer marker, so anything that may
    still become a marker ("… The ans"), and everything after a complete one (a later marker
    could move the split), waits for the end; so do trailing whitespace and a trailing "A:"
    label. Zero-shot rationales are the whole stage-1 text, stripped."""

    def __init__(self, spec: CotSpec, demos: Sequence) -> None:
        self.split = not needs_answer_stage(spec, list(demos))
        self.sent = ""

    def _safe_prefix(self, text: str) -> str:
        if self.split:
            marker = _MARKER.search(text, partial=True)
            if marker is not None:
                text = text[:marker.start()]
        text = _PARTIAL_LABEL.sub("", text.rstrip()).rstrip()
        return text.lstrip()

    def update(self, text: str) -> str:
        """The delta to send for the stage-1 text so far ("" when nothing new is safe)."""
        safe = self._safe_prefix(text)
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta

    def finish(self, rationale: str) -> str:
        """The rest of the final rationale."""
        if not rationale.startswith(self.sent):  # cannot happen (see the tests); never resend text
            return ""
        delta, self.sent = rationale[len(self.sent):], rationale
        return delta


class CotCall:
    """One CoT request in flight: the run_cot task and its rationale as it grows."""

    def __init__(self, llm: LLMService, spec: CotSpec, question: str, params: SamplingParams, chat: bool,
                 system: Sequence[dict] = ()) -> None:
        self.llm, self.spec, self.question, self.params, self.chat = llm, spec, question, params, chat
        self.model = llm.served_name(params.lora)  # what the response's `model` echoes
        try:
            demos = spec.resolve_demos(llm.cot_demos)
        except CotError as exc:
            raise invalid_cot(exc) from None
        self.rationale = RationaleStream(spec, demos)
        live = spec.n == 1 and spec.mode != "none"  # n chains: the chosen one is known at the end
        self.generate = StreamGenerate(llm, system=system, on_rationale=self._on_rationale if live else None)
        self.id, self.created = uuid.uuid4().hex, int(time.time())
        self._text, self._changed = "", asyncio.Event()
        self._task: asyncio.Task | None = None

    def _on_rationale(self, index: int, text: str) -> None:
        self._text = text
        self._changed.set()

    async def run(self) -> CotResult:
        return await run_request_cot(self.llm, self.spec, self.question, self.params, self.chat, self.generate)

    async def start(self) -> None:
        """Start the run and return once its rationale request is admitted, so that a bad request
        or a full queue is still an HTTP error rather than an in-band one."""
        self._task = asyncio.create_task(self.run())
        self._task.add_done_callback(lambda _: self._changed.set())
        opened = asyncio.create_task(self.generate.opened.wait())
        try:
            await asyncio.wait((self._task, opened), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self.close()
            raise
        finally:
            opened.cancel()
        if self._task.done():
            self._task.result()  # raises the run's APIError

    async def events(self) -> AsyncIterator[tuple[str, CotResult | None]]:
        """(reasoning delta, None) while the rationale grows, then (last delta, result)."""
        try:
            while not self._task.done():
                await self._changed.wait()
                self._changed.clear()
                delta = self.rationale.update(self._text)
                if delta:
                    yield delta, None
            result = self._task.result()
            yield self.rationale.finish(result.rationale), result
        finally:
            await self.close()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()  # closes its engine streams: the requests are aborted
            await asyncio.gather(self._task, return_exceptions=True)

    def usage(self) -> dict:
        g = self.generate
        return {"prompt_tokens": g.num_prompt_tokens, "completion_tokens": g.num_output_tokens,
                "total_tokens": g.num_prompt_tokens + g.num_output_tokens}
