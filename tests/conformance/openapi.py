"""OpenAI's published OpenAPI document, read strictly: the schema of a route's body, and a validator
that gives every way a livecast body departs from it.

openapi.json.xz is OpenAI's openapi.json, version 2.3.0, from github.com/openai/openai-openapi at
commit f85dbe223d40e1a31cba812ab2d755c7e98a92a3 (xz -9e of the file as published).

Strict reading: `null` is valid only where the schema says so (`type: "null"`, a `null` in a type
list or an enum, or the document's `nullable: true`); a `oneOf` is read as `anyOf` (the document's
discriminated unions have branches that overlap, and its clients pick a branch by the discriminator).
"""
from __future__ import annotations

import functools
import json
import lzma
import re
from pathlib import Path

from jsonschema import Draft202012Validator

SPEC_PATH = Path(__file__).with_name("openapi.json.xz")
SPEC_VERSION, SPEC_COMMIT = "2.3.0", "f85dbe223d40e1a31cba812ab2d755c7e98a92a3"


def _strict(node):
    """The document as plain JSON Schema 2020-12: `nullable` spelled out, `oneOf` as `anyOf`."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {("anyOf" if k == "oneOf" else k): _strict(v) for k, v in node.items()
           if k not in ("discriminator", "nullable", "example", "x-oaiMeta")}
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        elif isinstance(out.get("type"), list) and "null" not in out["type"]:
            out["type"] = [*out["type"], "null"]
        elif "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


@functools.cache
def document() -> dict:
    return json.loads(lzma.decompress(SPEC_PATH.read_bytes()))


@functools.cache
def _strict_document() -> dict:
    return _strict(document())


@functools.cache
def _template(path: str) -> tuple[re.Pattern, ...]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")


def route_of(method: str, path: str) -> dict:
    """The document's operation for a served path (`/v1/...`), with its template."""
    path = path.split("?")[0].removeprefix("/v1")
    paths = document()["paths"]
    if path in paths and method.lower() in paths[path]:  # a literal path wins over a template
        return {"template": path, **paths[path][method.lower()]}
    for template, ops in paths.items():
        if "?" not in template and _template(template).match(path) and method.lower() in ops:
            return {"template": template, **ops[method.lower()]}
    raise KeyError(f"{method} {path} is not in OpenAI's document")


def response_schema(method: str, path: str, status: int, media: str = "application/json") -> dict:
    responses = route_of(method, path)["responses"]
    content = (responses.get(str(status)) or {}).get("content") or {}
    if media not in content:
        raise KeyError(f"{method} {path} {status} has no {media} body in OpenAI's document")
    return content[media]["schema"]


def request_schema(method: str, path: str, media: str = "application/json") -> dict:
    return route_of(method, path)["requestBody"]["content"][media]["schema"]


def component(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


@functools.cache
def _validator_for(schema_json: str) -> Draft202012Validator:
    root = {**_strict_document(), **_strict(json.loads(schema_json))}
    return Draft202012Validator(root)


def completion_chunk() -> dict:
    """A streamed /v1/completions chunk. The document has no event-stream schema for that route; its
    chunks are CreateCompletionResponse objects whose `finish_reason` is null until the last one, as
    OpenAI's own stream sends them (the one reading added here, named in docs/API.md)."""
    schema = json.loads(json.dumps(document()["components"]["schemas"]["CreateCompletionResponse"]))
    reason = schema["properties"]["choices"]["items"]["properties"]["finish_reason"]
    reason["type"], reason["enum"] = ["string", "null"], [*reason["enum"], None]
    return schema


def errors(schema: dict, instance) -> list[str]:
    """Every departure of `instance` from `schema`, as `path: message` lines (empty: it conforms)."""
    validator = _validator_for(json.dumps(schema, sort_keys=True))
    found = []
    for error in validator.iter_errors(instance):
        for leaf in _reasons(error):
            where = "/".join(str(p) for p in leaf.absolute_path) or "(root)"
            found.append(f"{where}: {leaf.message[:300]}")
    return found


_TAGS = ("type", "event", "object", "role")  # the fields the document's unions are told apart by


def _branches(error) -> list[list]:
    groups: dict = {}
    for e in error.context:
        groups.setdefault(e.relative_schema_path[0], []).append(e)
    return list(groups.values())


def _wrong_tag(e, depth: int) -> bool:
    """A branch this instance is not: its tag field (`type`, `event`…) is another one."""
    if e.validator in ("enum", "const"):
        return len(e.absolute_path) == depth + 1 and e.absolute_path[-1] in _TAGS
    return bool(e.context) and all(any(_wrong_tag(x, depth) for x in b) for b in _branches(e))


def _reasons(error) -> list:
    """The real departures under an anyOf: the branch whose tag matched (else the one with the fewest
    errors), followed down."""
    if not error.context:
        return [error]
    depth = len(error.absolute_path)
    ranked = sorted(_branches(error), key=lambda errs: (any(_wrong_tag(e, depth) for e in errs), len(errs)))
    return [leaf for e in ranked[0] for leaf in _reasons(e)]


def request_examples(method: str, path: str) -> list[tuple[str, dict]]:
    """(title, JSON body) of each curl example of a route that sends a JSON body."""
    meta = document()["paths"][path][method.lower()].get("x-oaiMeta") or {}
    examples = meta.get("examples") or []
    found = []
    for example in examples if isinstance(examples, list) else [examples]:
        curl = (example.get("request") or {}).get("curl", "")
        match = re.search(r"-d '(.*)'", curl, re.S)
        if match:
            try:
                found.append((example.get("title", ""), json.loads(match.group(1))))
            except ValueError:
                continue
    return found
