"""A Responses request with the `cot` extension: the rationale comes back as a `reasoning` output
item and the answer as the message, streamed as `response.reasoning_text.*` then the usual text
events. It stands in for the RunLoop (same open/close/events/usage surface), so the response's
lifecycle, storage and cancellation are the ordinary ones."""
from __future__ import annotations

from contextlib import aclosing
from typing import AsyncIterator

from livecast.services.agents.loop import LoopEvent
from livecast.services.agents.responses.items import message_item
from livecast.services.agents.store import new_id
from livecast.services.errors import APIError
from livecast.services.llm.cot import CotError, CotSpec
from livecast.services.llm.cot.route import answer_text, cot_extension, cot_params
from livecast.services.llm.cot.serving import CotCall, invalid_cot


class CotLoop:
    def __init__(self, llm, body, items: list[dict], lora: str | None = None) -> None:
        if body.tools:
            raise APIError(400, "cot cannot be combined with tools", param="tools")
        try:
            spec = CotSpec.from_request(body.cot)
        except CotError as exc:
            raise invalid_cot(exc) from None
        system = [{"role": "system", "content": body.instructions}] if body.instructions else []
        self.call = CotCall(llm, spec, _question(items), cot_params(body, spec, body.max_output_tokens, lora),
                            chat=True, system=system)
        self.output: list[dict] = []
        self.finish: str | None = None
        self.input_tokens = self.output_tokens = 0
        self.extension: dict | None = None  # {mode, answer, votes} once finished

    async def open(self) -> None:
        await self.call.start()  # a bad request or a full queue is still an HTTP error here

    async def close(self) -> None:
        await self.call.close()

    async def events(self) -> AsyncIterator[LoopEvent]:
        reasoning = {"id": new_id("rs"), "type": "reasoning", "summary": [], "status": "in_progress",
                     "content": [{"type": "reasoning_text", "text": ""}]}
        yield LoopEvent("reasoning.start", reasoning)
        result = None
        async with aclosing(self.call.events()) as events:
            async for delta, result in events:
                if delta:
                    reasoning["content"][0]["text"] += delta
                    yield LoopEvent("reasoning.delta", reasoning, delta)
        usage = self.call.usage()
        self.input_tokens, self.output_tokens = usage["prompt_tokens"], usage["completion_tokens"]
        self.finish = self.call.generate.finish_reason(result)
        status = "incomplete" if self.finish == "length" else "completed"
        reasoning["status"] = status
        self.output.append(reasoning)
        yield LoopEvent("reasoning.done", reasoning)
        message = message_item("assistant", "")
        message["status"] = "in_progress"
        yield LoopEvent("text.start", message)
        text = answer_text(result)
        message["content"][0]["text"] = text
        yield LoopEvent("text.delta", message, text)
        message["status"] = status
        self.output.append(message)
        self.extension = cot_extension(result)
        yield LoopEvent("text.done", message)


def _question(items: list[dict]) -> str:
    """The text of the last user message: what the chain of thought answers."""
    for item in reversed(items):
        if item.get("type") == "message" and item.get("role") == "user":
            text = "".join(part.get("text") or "" for part in item.get("content", []))
            if text.strip():
                return text
    raise APIError(400, "cot needs a question: the last user message must hold text", param="input")
