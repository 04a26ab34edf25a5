"""Chain-of-Thought as a serving feature: zero-shot, manual few-shot, Auto-CoT, self-consistency.

The request-level API: `CotSpec.from_request(body["cot"])`, `spec.resolve_demos(sets)`,
`run_cot(generate_fn, spec, question, demos, params, chat)` → `CotResult` (rationale and answer
apart, self-consistency votes). Demo sets: `load_named_sets(["NAME=PATH", ...])`.

The subpackage is all of CoT:
- the core: `spec` (the request field), `demos`, `prompts`, `answers`, `runner` (`run_cot`)
- serving: `serving` (CoT requests over `LLMService.open_stream`, streamed rationale) and `route`
  (the HTTP glue the chat and completions routes call)
- `offline/`: what only `livecast cot …` and `livecast bench cot` use (the Auto-CoT demo builder
  beside its CLI command, question files and the shipped data, self-consistency measurement);
  no serving module imports it
"""
from livecast.services.llm.cot.answers import extract_answer, majority_vote, split_rationale_answer
from livecast.services.llm.cot.demos import Demo, DemoSet, load_demo_set, load_named_sets
from livecast.services.llm.cot.prompts import answer_prompt, build_prompt
from livecast.services.llm.cot.runner import CotResult, EngineDriver, async_engine_generate_fn, run_cot
from livecast.services.llm.cot.spec import CotError, CotSpec

__all__ = ["CotError", "CotResult", "CotSpec", "Demo", "DemoSet", "EngineDriver", "answer_prompt",
           "async_engine_generate_fn", "build_prompt", "extract_answer", "load_demo_set", "load_named_sets",
           "majority_vote", "run_cot", "split_rationale_answer"]
