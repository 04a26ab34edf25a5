"""Offline API: `LLM(...).generate(prompts, params)`, `.chat(messages, params)`, `.beam_search(...)`."""
from __future__ import annotations

import itertools
from typing import Sequence

from tqdm import tqdm

from livecast.engine.config import EngineConfig
from livecast.engine.llm_engine import LLMEngine
from livecast.engine.request_output import RequestOutput
from livecast.engine.sampling_params import BeamSearchParams, SamplingParams

Prompt = str | list[int]


class LLM:
    def __init__(self, model: str | None = None, **kwargs) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **kwargs))
        self.tokenizer = self.engine.tokenizer
        self._ids = itertools.count()

    def generate(self, prompts: Prompt | Sequence[Prompt], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool | None = None) -> list[RequestOutput]:
        """Run all prompts to completion, batched by the engine; outputs in prompt order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = params or SamplingParams()
        param_list = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(param_list) != len(prompts):
            raise ValueError(f"got {len(param_list)} SamplingParams for {len(prompts)} prompts")
        return self._run(prompts, param_list, use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]], params: SamplingParams | None = None,
             use_tqdm: bool | None = None) -> list[RequestOutput]:
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        prompts = [self.apply_chat_template(c) for c in conversations]
        return self.generate(prompts, params, use_tqdm)

    def apply_chat_template(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def beam_search(self, prompts: Prompt | Sequence[Prompt], beam_width: int, max_tokens: int,
                    ignore_eos: bool = False, length_penalty: float = 1.0) -> list[RequestOutput]:
        """Beams share their prefix blocks and fork copy-on-write; outputs ranked best first."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = BeamSearchParams(beam_width, max_tokens, ignore_eos, length_penalty)
        return self._run(prompts, [params] * len(prompts), use_tqdm=False)

    def _run(self, prompts, param_list, use_tqdm) -> list[RequestOutput]:
        ids = []
        try:
            for prompt, params in zip(prompts, param_list):
                request_id = f"offline-{next(self._ids)}"
                self.engine.add_request(request_id, prompt, params)
                ids.append(request_id)
        except Exception:
            for request_id in ids:
                self.engine.abort_request(request_id)
            raise
        show = len(prompts) >= 32 if use_tqdm is None else use_tqdm
        done: dict[str, RequestOutput] = {}
        with tqdm(total=len(ids), desc="Processed prompts", disable=not show) as bar:
            while len(done) < len(ids):
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
                        bar.update(1)
                failed = [i for i in ids if i in self.engine.step_errors]
                if failed:
                    for request_id in ids:
                        self.engine.abort_request(request_id)
                    raise ValueError(f"request {failed[0]} failed: {self.engine.step_errors[failed[0]]}")
        return [done[i] for i in ids]
