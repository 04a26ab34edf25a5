"""Request bodies at the HTTP/WebSocket edge (pydantic), and their one way into SamplingParams.

Types are checked here; ranges are left to SamplingParams, so every route reports the same
message for the same mistake. Unknown fields are ignored, as OpenAI-compatible servers do.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from livecast.engine import SamplingParams
from livecast.services.edge import EdgeModel
from livecast.services.errors import APIError


Text = Annotated[str, Field(min_length=1)]  # the schema says what the engine needs: no empty prompts
TokenIds = Annotated[list[int], Field(min_length=1)]


class SamplingFields(EdgeModel):
    """Sampling controls shared by every generating route (OpenAI names plus vLLM's extras)."""

    model_config = ConfigDict(extra="ignore")

    n: int = 1
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    logit_bias: dict[str, float] | None = None  # OpenAI's shape: token id (as a string) -> bias

    def sampling_params(self, *, max_tokens: int | None, **extra: Any) -> SamplingParams:
        """Raises APIError(400) naming the parameter when a value is out of range."""
        fields = ("n", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repetition_penalty", "seed", "stop", "stop_token_ids", "min_tokens", "ignore_eos",
                  "skip_special_tokens", "include_stop_str_in_output")
        kwargs = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        kwargs.update(max_tokens=max_tokens, **extra)
        if self.logit_bias:
            try:
                kwargs["logit_bias"] = {int(token): bias for token, bias in self.logit_bias.items()}
            except ValueError:
                raise APIError(400, "logit_bias keys must be token ids", param="logit_bias") from None
        try:
            return SamplingParams(**kwargs)
        except ValueError as exc:
            raise APIError.bad_request(exc) from exc


class StreamOptions(EdgeModel):
    include_usage: bool = False


# -- chat ------------------------------------------------------------------------------------
class ContentPart(EdgeModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class FunctionCall(EdgeModel):
    name: str
    arguments: str = "{}"


class ToolCall(EdgeModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(EdgeModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(EdgeModel):
    name: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(EdgeModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoice(EdgeModel):
    type: Literal["function"] = "function"
    function: dict[str, str]


class JSONSchemaSpec(EdgeModel):
    name: str = "response"
    description: str | None = None
    json_schema: dict[str, Any] | bool = Field(default=True, alias="schema")
    strict: bool | None = None


class ResponseFormat(EdgeModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None


class ChatCompletionRequest(SamplingFields):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    cot: dict[str, Any] | None = None  # Chain-of-Thought extension, see services/llm/cot_route.py


# -- completions -------------------------------------------------------------------------------
class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    max_tokens: int | None = 16
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None
    cot: dict[str, Any] | None = None  # Chain-of-Thought extension, see services/llm/cot_route.py


# -- TGI -----------------------------------------------------------------------------------------
class TGIGrammar(EdgeModel):
    type: Literal["json", "json_schema", "regex"]
    value: Any = None


class TGIParameters(EdgeModel):
    model_config = ConfigDict(extra="ignore")
    max_new_tokens: int | None = 100
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    details: bool = False
    return_full_text: bool = False
    grammar: TGIGrammar | None = None


class TGIRequest(EdgeModel):
    inputs: str
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


class TokenizeRequest(EdgeModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: list[Tool] | None = None


class DetokenizeRequest(EdgeModel):
    model: str | None = None
    tokens: list[int]


# -- WebSocket -------------------------------------------------------------------------------
class WSGenerate(SamplingFields):
    type: Literal["generate"]
    id: str | int
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    max_tokens: int | None = 256
