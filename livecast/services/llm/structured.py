"""Constrained decoding with xgrammar: compiled grammars behind a bounded LRU.

Each public method returns a zero-arg factory of fresh `GrammarMatcher`s, which is what
`SamplingParams.grammar` takes; the engine fills every row's token bitmask and masks the
logits of the whole batch in one op. Compiling runs in a worker thread, never on the event loop.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import OrderedDict
from typing import Any, Callable

import xgrammar as xgr
from xgrammar.structural_tag import GrammarFormat, StructuralTag, TagFormat, TagsWithSeparatorFormat

from livecast.services.errors import APIError

MatcherFactory = Callable[[], xgr.GrammarMatcher]

# Hermes/Qwen tool-call convention; services.llm.chat_template renders it and services.llm.function_calls parses it
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
# JSON is generated compact (`{"a": 1, "b": [2, 3]}`, as json.dumps writes it): free whitespace
# lets a weak model pad its output with newlines and tabs until max_tokens
_COMPACT = dict(any_whitespace=False)


def tool_call_prefix(name: str) -> str:
    return f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(name)}, "arguments": '


TOOL_CALL_SUFFIX = f"}}\n{TOOL_CALL_CLOSE}"


class GrammarCache:
    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int], capacity: int = 64) -> None:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info, max_threads=2, cache_enabled=False)
        self._capacity = capacity
        self._compiled: OrderedDict[str, xgr.CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._compiled)

    async def response_format(self, kind: str | None, schema: Any = None) -> MatcherFactory | None:
        """OpenAI `response_format`: "text" (or None) is unconstrained."""
        if kind == "json_object":
            return await self.json_object()
        if kind == "json_schema":
            if schema is None:
                raise APIError(400, "response_format.json_schema is required for type json_schema",
                               param="response_format.json_schema")
            return await self.json_schema(schema, "response_format.json_schema")
        return None

    async def json_object(self) -> MatcherFactory:
        return await self._get("json_object", lambda c: c.compile_json_schema(
            '{"type": "object"}', strict_mode=False, **_COMPACT), param="response_format")

    async def json_schema(self, schema: Any, param: str = "response_format") -> MatcherFactory:
        if not isinstance(schema, (dict, bool)):
            raise APIError(400, "the JSON schema must be an object", param=param)
        text = json.dumps(schema)
        return await self._get("schema:" + text, lambda c: c.compile_json_schema(text, **_COMPACT), param=param)

    async def regex(self, pattern: str, param: str = "grammar") -> MatcherFactory:
        return await self._get("regex:" + pattern, lambda c: c.compile_regex(pattern), param=param)

    async def tool_calls(self, functions: list[dict], forced: str | None, parallel: bool) -> MatcherFactory:
        """`forced` → exactly one call of that function; otherwise one or more calls (`required`),
        each `<tool_call>\\n{"name": …, "arguments": <object matching its schema>}\\n</tool_call>`."""
        key = json.dumps([functions, forced, parallel])

        def build(compiler: xgr.GrammarCompiler) -> xgr.CompiledGrammar:
            tags = {}
            for f in functions:
                schema = json.dumps(f.get("parameters") or {"type": "object"})
                arguments = xgr.Grammar.from_json_schema(schema, **_COMPACT)
                tags[f["name"]] = TagFormat(begin=tool_call_prefix(f["name"]), end=TOOL_CALL_SUFFIX,
                                            content=GrammarFormat(grammar=str(arguments)))
            fmt = tags[forced] if forced is not None else TagsWithSeparatorFormat(
                tags=list(tags.values()), separator="\n", at_least_one=True, stop_after_first=not parallel)
            return compiler.compile_structural_tag(StructuralTag(format=fmt))

        return await self._get("tools:" + key, build, param="tools")

    async def _get(self, key: str, build: Callable[[xgr.GrammarCompiler], xgr.CompiledGrammar],
                   param: str) -> MatcherFactory:
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
        if compiled is None:
            try:
                compiled = await asyncio.to_thread(build, self._compiler)
            except Exception as exc:  # xgrammar reports bad schemas/regexes as RuntimeError/ValueError
                raise APIError(400, f"invalid {param}: {_reason(exc)}", param=param) from exc
            with self._lock:
                self._compiled[key] = compiled
                while len(self._compiled) > self._capacity:
                    self._compiled.popitem(last=False)
        return lambda: xgr.GrammarMatcher(compiled)


def _reason(exc: Exception) -> str:
    """xgrammar's message without its `[time] file.cc:line:` prefix."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", lines[-1])
