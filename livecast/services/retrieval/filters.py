"""OpenAI's attribute filters: comparisons (eq, ne, gt, gte, lt, lte, in, nin) and compound
and/or, validated once at the edge and evaluated against a file's `attributes`."""
from __future__ import annotations

from typing import Any

COMPARISONS = {"eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"}
COMPOUNDS = {"and", "or"}
MAX_DEPTH = 8


def validate_filter(value: Any, path: str = "filters", depth: int = 0) -> dict:
    """The filter itself if well-formed; ValueError naming the offending field otherwise."""
    if not isinstance(value, dict):
        raise ValueError(f"{path} must be an object")
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: filters nest at most {MAX_DEPTH} deep")
    kind = value.get("type")
    if kind in COMPOUNDS:
        children = value.get("filters")
        if not isinstance(children, list) or not children:
            raise ValueError(f"{path}.filters must be a non-empty list for type {kind!r}")
        for i, child in enumerate(children):
            validate_filter(child, f"{path}.filters[{i}]", depth + 1)
        return value
    if kind not in COMPARISONS:
        raise ValueError(f"{path}.type must be one of {sorted(COMPARISONS | COMPOUNDS)}, not {kind!r}")
    if not isinstance(value.get("key"), str) or not value["key"]:
        raise ValueError(f"{path}.key must be a non-empty string")
    if "value" not in value:
        raise ValueError(f"{path}.value is required")
    target = value["value"]
    if kind in ("in", "nin"):
        if not isinstance(target, list) or not all(isinstance(v, (str, int, float, bool)) for v in target):
            raise ValueError(f"{path}.value must be a list of strings, numbers or booleans for {kind!r}")
    elif not isinstance(target, (str, int, float, bool)):
        raise ValueError(f"{path}.value must be a string, number or boolean")
    elif kind in ("gt", "gte", "lt", "lte") and isinstance(target, bool):
        raise ValueError(f"{path}.value must be a number or string for {kind!r}")
    return value


def matches(flt: dict | None, attributes: dict) -> bool:
    """Whether `attributes` pass a validated filter; a missing key fails every test but ne/nin."""
    if flt is None:
        return True
    kind = flt["type"]
    if kind == "and":
        return all(matches(child, attributes) for child in flt["filters"])
    if kind == "or":
        return any(matches(child, attributes) for child in flt["filters"])
    key, target = flt["key"], flt["value"]
    if key not in attributes:
        return kind in ("ne", "nin")
    actual = attributes[key]
    if kind == "eq":
        return _same(actual, target)
    if kind == "ne":
        return not _same(actual, target)
    if kind == "in":
        return any(_same(actual, t) for t in target)
    if kind == "nin":
        return not any(_same(actual, t) for t in target)
    if not _comparable(actual, target):
        return False
    return {"gt": actual > target, "gte": actual >= target, "lt": actual < target, "lte": actual <= target}[kind]


def _same(a: Any, b: Any) -> bool:
    # True == 1 in Python; attributes keep booleans and numbers apart
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return False
    return (isinstance(a, numbers) and isinstance(b, numbers)) or (isinstance(a, str) and isinstance(b, str))
