"""`run_cot`: one question through a CoT mode, against any generate function.

The generate function is injected, `async generate(prompt, params) -> list[completion]`, where a
prompt is text or a chat message list, params are the engine's SamplingParams, and each
completion has `.text` and `.token_ids` (the engine's CompletionOutput). The same code therefore
runs against the async engine behind the server (`async_engine_generate_fn`), the offline
engine (`EngineDriver.generate`), or a fake in tests.
"""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Sequence

from livecast.engine.sampling_params import SamplingParams
from livecast.services.llm.cot.answers import extract_answer, majority_vote, split_rationale_answer, vote_counts
from livecast.services.llm.cot.demos import Demo
from livecast.services.llm.cot.prompts import (ANSWER_MAX_TOKENS, ANSWER_STOP, RATIONALE_STOP, Prompt,
                                         answer_prompt, build_prompt, needs_answer_stage)
from livecast.services.llm.cot.spec import CotError, CotSpec

GenerateFn = Callable[[Prompt, SamplingParams], Awaitable[Sequence[Any]]]
RATIONALE_MAX_TOKENS = 256
SELF_CONSISTENCY_TEMPERATURE = 0.7  # Wang et al. sample at T=0.5–0.7


@dataclass(slots=True)
class Chain:
    rationale: str
    answer: str | None
    num_tokens: int  # generated tokens of this chain, its stage-2 answer included


@dataclass(slots=True)
class CotResult:
    mode: str
    prompt: Prompt
    rationale: str  # of the first chain that reached the chosen answer
    answer: str | None
    votes: dict[str, int] = field(default_factory=dict)  # self-consistency: votes per answer
    chains: list[Chain] = field(default_factory=list)

    @property
    def num_output_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chains)


def rationale_params(spec: CotSpec, base: SamplingParams | None, chat: bool) -> SamplingParams:
    """Stage-1 sampling: the request's params with n chains and the rationale stops added.
    Without `base`: greedy, or T=0.7 for self-consistency."""
    if base is None:
        temperature = SELF_CONSISTENCY_TEMPERATURE if spec.mode == "self_consistency" else 0.0
        base = SamplingParams(temperature=temperature, max_tokens=RATIONALE_MAX_TOKENS)
    if spec.mode == "self_consistency" and spec.n > 1 and base.temperature == 0.0:
        raise CotError(f"self_consistency with n={spec.n} needs temperature > 0 (greedy chains are identical)",
                       "temperature")
    extra_stop = [] if chat else (ANSWER_STOP if spec.mode == "none" else RATIONALE_STOP)
    max_tokens = min(base.max_tokens or ANSWER_MAX_TOKENS, ANSWER_MAX_TOKENS) if spec.mode == "none" \
        else base.max_tokens
    return replace(base, n=spec.n, best_of=spec.n, max_tokens=max_tokens,
                   stop=[*base.stop, *(s for s in extra_stop if s not in base.stop)])


def answer_params(chat: bool, lora: str | None = None) -> SamplingParams:
    """Stage-2 sampling (greedy, a short answer), on the rationale's LoRA adapter."""
    return SamplingParams(temperature=0.0, max_tokens=ANSWER_MAX_TOKENS, stop=None if chat else ANSWER_STOP,
                          lora=lora)


async def run_cot(generate_fn: GenerateFn, spec: CotSpec, question: str, demos: Sequence[Demo] = (),
                  params: SamplingParams | None = None, chat: bool = False) -> CotResult:
    """Prompt, generate `spec.n` chains in one request, extract each answer, vote.

    Zero-shot chains (zero_shot, and self_consistency without demos) get Kojima's stage-2
    answer prompt, one request per chain, all in flight at once."""
    demos = list(demos)
    prompt = build_prompt(spec, question, demos, chat)
    outputs = list(await generate_fn(prompt, rationale_params(spec, params, chat)))
    if len(outputs) != spec.n:
        raise RuntimeError(f"generate_fn returned {len(outputs)} completions for n={spec.n}")
    if needs_answer_stage(spec, demos):
        lora = params.lora if params else None
        stage2 = await asyncio.gather(*(generate_fn(answer_prompt(prompt, o.text, spec.answer_format),
                                                    answer_params(chat, lora)) for o in outputs))
        chains = [Chain(o.text.strip(), extract_answer(a[0].text, spec.answer_format, "first"),
                        len(o.token_ids) + len(a[0].token_ids)) for o, a in zip(outputs, stage2)]
    elif spec.mode == "none":
        chains = [Chain("", extract_answer(o.text, spec.answer_format, "first"), len(o.token_ids))
                  for o in outputs]
    else:
        chains = [Chain(*split_rationale_answer(o.text, spec.answer_format), len(o.token_ids)) for o in outputs]
    answers = [c.answer for c in chains]
    answer, _ = majority_vote(answers)
    chosen = next((c for c in chains if c.answer == answer), chains[0])
    votes = vote_counts(answers) if spec.mode == "self_consistency" else {}
    return CotResult(spec.mode, prompt, chosen.rationale, answer, votes, chains)


# -- generate functions over the engine -----------------------------------------------------------
def chat_token_ids(tokenizer, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def async_engine_generate_fn(engine) -> GenerateFn:
    """Over an AsyncLLMEngine: concurrent `run_cot` calls batch in the engine's step loop."""
    ids = itertools.count()
    prefix = f"cot-{id(engine):x}"

    async def generate(prompt: Prompt, params: SamplingParams):
        if isinstance(prompt, list):
            prompt = chat_token_ids(engine.tokenizer, prompt)
        final = None
        async for out in engine.generate(prompt, params, f"{prefix}-{next(ids)}"):
            final = out
        return final.outputs

    return generate


class EngineDriver:
    """Runs many `run_cot` coroutines over one offline LLMEngine on the calling thread.

    For batch jobs (the benchmark, tests), not the server: coroutines add requests, then `run`
    steps the engine between event-loop turns, so every question in flight shares each batched
    step. It records the peak of referenced KV blocks while it runs."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.peak_blocks = 0
        self._ids = itertools.count()
        self._waiting: dict[str, asyncio.Future] = {}

    async def generate(self, prompt: Prompt, params: SamplingParams):
        if isinstance(prompt, list):
            prompt = chat_token_ids(self.engine.tokenizer, prompt)
        request_id = f"cot-drive-{next(self._ids)}"
        future = asyncio.get_running_loop().create_future()
        self.engine.add_request(request_id, prompt, params)
        self._waiting[request_id] = future
        return (await future).outputs

    async def run(self, coroutines: Sequence[Awaitable], max_in_flight: int = 32) -> list:
        """Results of `coroutines` in order; at most `max_in_flight` of them run at once."""
        gate = asyncio.Semaphore(max_in_flight)

        async def gated(coroutine):
            async with gate:
                return await coroutine

        tasks = [asyncio.ensure_future(gated(c)) for c in coroutines]
        try:
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0)  # let the coroutines reach their next generate()
                if self.engine.has_unfinished_requests():
                    self._step()
            return [t.result() for t in tasks]
        finally:
            for task in tasks:
                task.cancel()
            for request_id in list(self._waiting):
                self.engine.abort_request(request_id)
                self._waiting.pop(request_id).cancel()

    def _step(self) -> None:
        for out in self.engine.step():
            if out.finished and out.request_id in self._waiting:
                self._waiting.pop(out.request_id).set_result(out)
        self.peak_blocks = max(self.peak_blocks, self.engine.block_manager.device.num_used)
