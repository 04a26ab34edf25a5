"""The `file_search` built-in: the model writes a `file_search(query)` call, the retrieval room
(`ToolRooms.retrieval`, services.retrieval) searches the tool's vector stores, the hits go
into the model's context, and the answer cites every file they came from.

The output item is a `file_search_call` (`queries`, `status`, and `results` when the request
includes `file_search_call.results`). A model that writes no useful call is never searched for:
with `tool_choice` `required` or `{"type": "file_search"}` the grammar forces `{"query": "…"}`
(1–128 characters); a blank query or an unreachable store makes a `failed` item the model is told
about, not a failed response. Citations: the messages written after a search carry one
`file_citation` per file whose chunks were put in the context, best first, at the end of the text
(`index` = its length), since these models write no citation markers of their own.
"""
from __future__ import annotations

import json

from livecast.services.retrieval.filters import validate_filter
from livecast.services.retrieval.service import MAX_SEARCH_RESULTS
from livecast.services.errors import APIError

MAX_QUERY_CHARS = 128
DEFAULT_MAX_NUM_RESULTS = 5  # small local models have small contexts; OpenAI's is 10-20
MAX_CONTEXT_CHARS_PER_RESULT = 1500  # each hit as the model reads it; the item keeps the whole chunk
INCLUDE_RESULTS = "file_search_call.results"
FUNCTION = {"name": "file_search",
            "description": "Search the user's files for passages relevant to a query, then answer from them.",
            "parameters": {"type": "object", "properties": {"query": {  # no description: SmolLM2 copies it
                "type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS}}, "required": ["query"],
                "additionalProperties": False}}


class FileSearch:
    type = "file_search"
    id_prefix = "fs"
    function = FUNCTION

    def __init__(self, retrieval, vector_store_ids: list[str], max_num_results: int, filters: dict | None,
                 score_threshold: float) -> None:
        self.retrieval, self.vector_store_ids = retrieval, vector_store_ids
        self.max_num_results, self.filters, self.score_threshold = max_num_results, filters, score_threshold
        self.cited: dict[str, str] = {}  # file_id -> filename of every hit given to the model, best first

    @classmethod
    def from_spec(cls, tool: dict, rooms) -> "FileSearch":
        """Responses' flat `{"type": "file_search", "vector_store_ids", "max_num_results", "filters",
        "ranking_options"}` or Assistants' `{"type": "file_search", "file_search": {…}}` (its stores come
        from `tool_resources`, see `with_resources`); 4xx naming the bad field."""
        retrieval = rooms.retrieval
        if retrieval is None or retrieval.embedder is None:
            raise APIError(400, "file_search is not enabled on this server (it needs the retrieval room and an "
                                "embedding model)", param="tools", code="file_search_disabled")
        options = tool.get("file_search") if isinstance(tool.get("file_search"), dict) else tool
        ids = tool.get("vector_store_ids") or []
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise APIError(400, "tools.vector_store_ids must be a list of vector store ids",
                           param="tools.vector_store_ids")
        for store_id in ids:
            retrieval.vector_stores.row(store_id)  # 404 for an unknown store, before anything runs
        max_num_results = options.get("max_num_results")
        max_num_results = DEFAULT_MAX_NUM_RESULTS if max_num_results is None else max_num_results
        if not isinstance(max_num_results, int) or not 1 <= max_num_results <= MAX_SEARCH_RESULTS:
            raise APIError(400, f"tools.max_num_results must be an integer in 1..{MAX_SEARCH_RESULTS}",
                           param="tools.max_num_results")
        threshold = (options.get("ranking_options") or {}).get("score_threshold") or 0.0
        if not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise APIError(400, "tools.ranking_options.score_threshold must be a number in 0..1",
                           param="tools.ranking_options.score_threshold")
        filters = tool.get("filters")
        if filters is not None:
            try:
                validate_filter(filters, "tools.filters")
            except ValueError as exc:
                raise APIError(400, str(exc), param="tools.filters") from None
        return cls(retrieval, list(ids), max_num_results, filters, float(threshold))

    async def start_item(self, item_id: str, arguments: str) -> dict:
        try:
            query = json.loads(arguments).get("query")
        except (ValueError, AttributeError):
            query = None
        queries = [query.strip()] if isinstance(query, str) and query.strip() else []
        return {"id": item_id, "type": "file_search_call", "status": "in_progress", "queries": queries,
                "results": None}

    def progress(self, item: dict) -> list[tuple[str, dict]]:
        return [("response.file_search_call.searching", {})]

    async def call(self, item: dict) -> dict:
        if not item["queries"] or not self.vector_store_ids:
            return {**item, "status": "failed"}
        try:
            hits = await self.retrieval.search(self.vector_store_ids, item["queries"][0], self.max_num_results,
                                               self.filters, self.score_threshold)
        except APIError:  # e.g. a store deleted or expired since the request began: the model hears of it
            return {**item, "status": "failed"}
        for hit in hits:
            self.cited.setdefault(hit.file_id, hit.filename)
        return {**item, "status": "completed", "results": [
            {"file_id": h.file_id, "filename": h.filename, "score": round(h.score, 6), "attributes": h.attributes,
             "text": h.text} for h in hits]}

    def annotations(self, text: str) -> list[dict]:
        return [{"type": "file_citation", "file_id": file_id, "filename": filename, "index": len(text)}
                for file_id, filename in self.cited.items()]


def render(item: dict) -> str:
    """A `file_search_call`'s results as the model reads them (the tool message after its call)."""
    if item.get("status") == "failed":
        return "The search failed: no query was given or the vector stores are unavailable."
    if item.get("results") is None:
        return "(the results of this search were not kept)"
    if not item["results"]:
        return "No results."
    return "\n\n".join(f"[{i}] {r['filename']}:\n{r['text'][:MAX_CONTEXT_CHARS_PER_RESULT]}"
                       for i, r in enumerate(item["results"], 1))


def shown(item: dict, include) -> dict:
    """The item as the client gets it: `results` only when the request included them."""
    if item.get("type") == "file_search_call" and INCLUDE_RESULTS not in (include or ()):
        return {**item, "results": None}
    return item


def with_resources(tools: list[dict] | None, *tool_resources: dict | None) -> list[dict] | None:
    """Assistants' tools with each `file_search` tool given the vector stores of the assistant's and the
    thread's `tool_resources.file_search.vector_store_ids`."""
    ids: list[str] = []
    for resources in tool_resources:
        for store_id in ((resources or {}).get("file_search") or {}).get("vector_store_ids") or []:
            if store_id not in ids:
                ids.append(store_id)
    return [{**t, "vector_store_ids": [*(t.get("vector_store_ids") or []), *ids]}
            if isinstance(t, dict) and t.get("type") == "file_search" else t for t in tools or []] or tools


def step_call(item: dict) -> dict:
    """A `file_search_call` item as an Assistants run step's tool call."""
    results = [{"file_id": r["file_id"], "file_name": r["filename"], "score": r["score"],
                "content": [{"type": "text", "text": r["text"]}]} for r in item.get("results") or []]
    return {"id": item["id"], "type": "file_search", "file_search": {
        "results": results, "queries": item["queries"], "status": item["status"]}}


def item_from_step(call: dict) -> dict:
    fs = call["file_search"]
    results = [{"file_id": r["file_id"], "filename": r["file_name"], "score": r["score"], "attributes": {},
                "text": "".join(c["text"] for c in r.get("content") or [])} for r in fs.get("results") or []]
    return {"id": call["id"], "type": "file_search_call", "queries": fs.get("queries") or [],
            "status": fs.get("status", "completed"), "results": results}
