"""Run-loop events → Responses streaming events, as the official client parses them.

Every event carries a `sequence_number` that grows by one; items carry `output_index` (their
place in `response.output`) and snapshots are copies, so later deltas never rewrite an event
already sent. The non-streamed response is the `response` this writer finishes, so a stream and
a plain call of the same request end with the same object.
"""
from __future__ import annotations

import copy

from livecast.services.agents.loop import LoopEvent
from livecast.services.agents.tools.file_search import shown


class ResponseEvents:
    def __init__(self, response: dict, include: list[str] | None = None) -> None:
        self.response, self.include = response, include or []
        self.sequence_number = 0
        self._index: dict[str, int] = {}  # item id -> output_index

    def event(self, kind: str, **fields) -> dict:
        event = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return event

    def lifecycle(self, kind: str) -> dict:
        """response.created / .in_progress / .completed / .incomplete / .failed / .queued."""
        return self.event(kind, response=copy.deepcopy(self.response))

    def translate(self, ev: LoopEvent) -> list[dict]:
        item = ev.item
        if ev.kind in ("text.start", "call.start", "tool.start", "reasoning.start", "approval"):
            self._index[item["id"]] = len(self._index)
        at = {"item_id": item["id"], "output_index": self._index[item["id"]]}
        if ev.kind == "reasoning.start":
            return [self.event("response.output_item.added", output_index=at["output_index"],
                               item={**copy.deepcopy(item), "content": []})]
        if ev.kind == "reasoning.delta":
            return [self.event("response.reasoning_text.delta", **at, content_index=0, delta=ev.delta)]
        if ev.kind == "reasoning.done":
            return [self.event("response.reasoning_text.done", **at, content_index=0,
                               text=item["content"][0]["text"]), self._item_done(item)]
        if ev.kind == "text.start":
            return [self.event("response.output_item.added", output_index=at["output_index"],
                               item={**copy.deepcopy(item), "content": []}),
                    self.event("response.content_part.added", **at, content_index=0,
                               part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})]
        if ev.kind == "text.delta":
            return [self.event("response.output_text.delta", **at, content_index=0, delta=ev.delta, logprobs=[])]
        if ev.kind == "text.done":
            part = copy.deepcopy(item["content"][0])
            return [*(self.event("response.output_text.annotation.added", **at, content_index=0, annotation_index=i,
                                 annotation=a) for i, a in enumerate(part["annotations"])),
                    self.event("response.output_text.done", **at, content_index=0, text=part["text"], logprobs=[]),
                    self.event("response.content_part.done", **at, content_index=0, part=part),
                    self._item_done(item)]
        if ev.kind == "call.start":
            return [self.event("response.output_item.added", output_index=at["output_index"],
                               item=copy.deepcopy(item))]
        if ev.kind == "call.delta":
            return [self.event("response.function_call_arguments.delta", **at, delta=ev.delta)]
        if ev.kind == "call.done":
            return [self.event("response.function_call_arguments.done", **at, name=item["name"],
                               arguments=item["arguments"]),
                    self._item_done(item)]
        if ev.kind == "approval":  # an mcp_approval_request: whole when added
            return [self.event("response.output_item.added", output_index=at["output_index"], item=copy.deepcopy(item)),
                    self._item_done(item)]
        kind = f"response.{item['type']}"  # a built-in tool's call item, e.g. code_interpreter_call
        if ev.kind == "tool.start":
            return [self.event("response.output_item.added", output_index=at["output_index"], item=copy.deepcopy(item)),
                    self.event(f"{kind}.in_progress", **at),
                    *(self.event(name, **at, **fields) for name, fields in ev.progress)]
        failed = item["type"].startswith("mcp_") and (item.get("status") == "failed" or item.get("error"))
        return [self.event(f"{kind}.{'failed' if failed else 'completed'}", **at), self._item_done(item)]  # tool.done

    def _item_done(self, item: dict) -> dict:
        item = shown(item, self.include)  # what the client asked to see is also what is stored
        self.response["output"].append(copy.deepcopy(item))
        return self.event("response.output_item.done", output_index=self._index[item["id"]], item=copy.deepcopy(item))
