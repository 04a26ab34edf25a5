"""Request bodies of the Responses and Conversations APIs (pydantic, at the HTTP edge only).

Items and tools stay plain dicts here: services.agents.responses.items and services.agents.tools
check them and name the exact field that is wrong.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from livecast.services.llm.protocol import MAX_MESSAGES, MAX_TOOLS, SamplingFields

Metadata = dict[str, str]


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None

    def to_openai(self) -> dict:
        out = {"type": self.type}
        if self.type == "json_schema":
            out.update(name=self.name or "response", schema=self.json_schema, strict=bool(self.strict))
            if self.description is not None:
                out["description"] = self.description
        return out


class TextConfig(BaseModel):
    format: TextFormat = Field(default_factory=TextFormat)


class ConversationRef(BaseModel):
    id: str


class ResponseCreate(SamplingFields):
    model: str | None = None
    input: str | Annotated[list[Any], Field(max_length=MAX_MESSAGES)] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    conversation: str | ConversationRef | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    max_tool_calls: int | None = Field(default=None, ge=1)
    metadata: Metadata | None = Field(default=None, max_length=16)
    include: list[str] | None = Field(default=None, max_length=16)
    truncation: Literal["auto", "disabled"] = "disabled"
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # only 0: Responses here carry no logprobs
    cot: dict[str, Any] | None = None  # livecast's Chain-of-Thought extension (docs/API.md)
    user: str | None = None

    @property
    def conversation_id(self) -> str | None:
        return self.conversation.id if isinstance(self.conversation, ConversationRef) else self.conversation


class ConversationCreate(BaseModel):
    items: list[Any] | None = Field(default=None, max_length=20)
    metadata: Metadata | None = Field(default=None, max_length=16)


class ConversationUpdate(BaseModel):
    metadata: Metadata = Field(max_length=16)


class ItemsCreate(BaseModel):
    items: list[Any] = Field(min_length=1, max_length=20)
