"""The base of every request body (pydantic, at the HTTP/WebSocket edge): text must be valid Unicode."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator


def has_lone_surrogate(value: Any) -> bool:
    """True for text (or lists/dicts holding text) that is not valid Unicode: JSON's "\\ud800"
    escape decodes to a lone UTF-16 surrogate, which no tokenizer or UTF-8 encoder accepts."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, (list, tuple)):
        return any(has_lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(has_lone_surrogate(k) or has_lone_surrogate(v) for k, v in value.items())
    return False


class EdgeModel(BaseModel):
    """A body, or part of one, that arrived over the network: its text must be valid Unicode, so
    a lone surrogate is a 400 naming the field, never a tokenizer crash."""

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        if has_lone_surrogate(value):
            raise ValueError("contains a lone UTF-16 surrogate, which is not valid Unicode text")
        return value
