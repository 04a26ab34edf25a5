"""Request bodies of the Assistants v2 routes (pydantic, at the HTTP edge only)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from livecast.services.agents.responses.protocol import Metadata
from livecast.services.llm.protocol import Temperature, TopP


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AssistantFields(_Body):
    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=512)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    response_format: str | dict[str, Any] | None = None


class AssistantCreate(AssistantFields):
    model: str


class AssistantUpdate(AssistantFields):
    model: str | None = None


class MessageCreate(_Body):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]
    attachments: list[dict[str, Any]] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)


class ThreadCreate(_Body):
    messages: list[MessageCreate] | None = Field(default=None, max_length=32)
    tool_resources: dict[str, Any] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)


class MetadataUpdate(_Body):
    metadata: Metadata | None = Field(default=None, max_length=16)
    tool_resources: dict[str, Any] | None = None


class TruncationStrategy(_Body):
    type: Literal["auto", "last_messages"] = "auto"
    last_messages: int | None = Field(default=None, ge=1)


class RunCreate(_Body):
    assistant_id: str
    model: str | None = None
    instructions: str | None = None
    additional_instructions: str | None = None
    additional_messages: list[MessageCreate] | None = None
    tools: list[dict[str, Any]] | None = None
    metadata: Metadata | None = Field(default=None, max_length=16)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    stream: bool = False
    max_prompt_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    truncation_strategy: TruncationStrategy | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    response_format: str | dict[str, Any] | None = None


class ThreadAndRunCreate(RunCreate):
    thread: ThreadCreate | None = None


class ToolOutput(_Body):
    tool_call_id: str
    output: str = ""


class SubmitToolOutputs(_Body):
    tool_outputs: list[ToolOutput] = Field(min_length=1)
    stream: bool = False
