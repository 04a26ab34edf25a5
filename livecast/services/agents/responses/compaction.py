"""POST /v1/responses/input_tokens and POST /v1/responses/compact: a request's context measured, and
cut down to a budget, with the prompt the run loop would build (the model's own chat template,
with the instructions and the offered tools), without generating anything.

Compaction truncates, it does not summarise: it keeps the newest items whose prompt fits the
budget (half the model's context, so an answer still fits after them) and drops the older ones.
A small local model's summary would lose facts silently; a cut is honest about what is gone.
"""
from __future__ import annotations

import bisect
import time

from livecast.services.agents.loop import LoopRequest, RunLoop
from livecast.services.agents.responses.items import check_call_outputs, normalize_input
from livecast.services.agents.responses.protocol import ResponseCreate
from livecast.services.agents.store import new_id
from livecast.services.agents.tools import build_toolset


def _loop(responses, body: ResponseCreate) -> tuple[RunLoop, list[dict]]:
    """A run loop over the request's whole context (never opened: nothing runs), and that context."""
    lora = responses.llm.resolve_model(body.model)
    new_items = normalize_input(body.input)
    context = responses.context(body)
    check_call_outputs(context, new_items)
    toolset = build_toolset(body.tools, responses.agents.tools, mcp=True)
    loop = RunLoop(responses.llm, LoopRequest(
        items=context + new_items, toolset=toolset, tool_choice=body.tool_choice,
        make_params=lambda **kw: body.sampling_params(lora=lora, **kw), instructions=body.instructions,
        parallel_tool_calls=body.parallel_tool_calls, truncation=body.truncation), "count")
    return loop, context + new_items


def input_tokens(responses, body: ResponseCreate) -> dict:
    """The tokens of the first prompt a response with this body would be given."""
    loop, _ = _loop(responses, body)
    return {"object": "response.input_tokens", "input_tokens": loop.num_prompt_tokens()}


def compact(responses, body: ResponseCreate) -> dict:
    """The newest items of the context whose prompt fits half the model's context (at least the last
    item), as fresh input items a next request can send as its `input`."""
    loop, items = _loop(responses, body)
    budget = responses.llm.max_model_len // 2
    num_tokens = loop.prompt_tokens(items)
    kept = items
    if num_tokens > budget and len(items) > 1:
        starts = range(1, len(items))  # the prompt shrinks as the start moves on: the first start that fits
        fits = bisect.bisect_left(starts, True, key=lambda s: loop.prompt_tokens(items[s:]) <= budget)
        kept = items[starts[min(fits, len(starts) - 1)]:]
    return {"id": new_id("resp"), "object": "response.compaction", "output": kept, "created_at": int(time.time()),
            "usage": {"input_tokens": num_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                      "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": num_tokens}}
