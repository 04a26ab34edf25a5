"""Request bodies at the HTTP/WebSocket edge (pydantic), and their one way into SamplingParams.

Types are checked here; ranges are left to SamplingParams, so every route reports the same
message for the same mistake. Unknown fields are ignored, as OpenAI-compatible servers do.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator

from livecast.engine import SamplingParams
from livecast.services.request_base import EdgeModel
from livecast.services.errors import APIError


# Every count a body carries is capped here, by pydantic, before anything is built for it: a
# request naming n=1e9 is a 400 with the cap in its message, never a billion objects. The
# engine's own limits (--max-best-of, --max-prompts, the KV cache) are checked after, inside these.
MAX_CHOICES = 128  # n; above any sane --max-best-of (default 32)
MAX_BEST_OF = 20  # OpenAI's bound on the legacy completions route
MAX_COMPLETION_LOGPROBS = 5  # likewise
MAX_TOP_LOGPROBS = 20
MAX_STOP = 16  # stop strings (OpenAI: 4)
MAX_TOKEN_LIST = 4096  # stop_token_ids, logit_bias entries
MAX_MESSAGES = 4096
MAX_TOOLS = 128  # OpenAI's limit
Count = Annotated[int, Field(le=MAX_CHOICES)]  # the lower bound is SamplingParams', with its message
Text = Annotated[str, Field(min_length=1)]  # the schema says what the engine needs: no empty prompts
TokenIds = Annotated[list[int], Field(min_length=1)]
Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(ge=0, le=1)]
Penalty = Annotated[float, Field(ge=-2, le=2)]


class SamplingFields(EdgeModel):
    """Sampling controls shared by every generating route (OpenAI names plus vLLM's extras)."""

    model_config = ConfigDict(extra="ignore")

    n: Count = 1
    # OpenAI's documented ranges, enforced (a 400 naming the field): docs/API.md, "Request bounds"
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: Annotated[list[int], Field(max_length=MAX_TOKEN_LIST)] | None = None
    max_tokens: int | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    speculative: bool | None = None  # livecast extension: false opts this request out of --speculative
    logit_bias: Annotated[dict[str, float], Field(max_length=MAX_TOKEN_LIST)] | None = None  # OpenAI's shape: token id (as a string) -> bias

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(stop)}")
        return stop

    def sampling_params(self, *, max_tokens: int | None, **extra: Any) -> SamplingParams:
        """Raises APIError(400) naming the parameter when a value is out of range."""
        fields = ("n", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                  "repetition_penalty", "seed", "stop", "stop_token_ids", "min_tokens", "ignore_eos",
                  "skip_special_tokens", "include_stop_str_in_output", "speculative")
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
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    store: bool = False  # keep it for GET /v1/chat/completions[/{id}] (the agents room's store)
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    cot: dict[str, Any] | None = None  # Chain-of-Thought extension, see services/llm/cot/route.py


# -- completions -------------------------------------------------------------------------------
class CompletionRequest(SamplingFields):
    model: str | None = None
    prompt: Text | Annotated[list[Text], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    max_tokens: int | None = 16
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, le=MAX_COMPLETION_LOGPROBS)
    best_of: Annotated[int, Field(le=MAX_BEST_OF)] | None = None
    response_format: ResponseFormat | None = None
    cot: dict[str, Any] | None = None  # Chain-of-Thought extension, see services/llm/cot/route.py


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
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP)
    details: bool = False
    return_full_text: bool = False
    grammar: TGIGrammar | None = None
    adapter_id: str | None = None  # TGI's multi-LoRA field: a loaded adapter's name (None: the base model)


class TGIRequest(EdgeModel):
    inputs: str
    parameters: TGIParameters = Field(default_factory=TGIParameters)
    stream: bool = False


class TokenizeRequest(EdgeModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, max_length=MAX_MESSAGES)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)


class DetokenizeRequest(EdgeModel):
    model: str | None = None
    tokens: list[int]


# -- WebSocket -------------------------------------------------------------------------------
class WSGenerate(SamplingFields):
    type: Literal["generate"]
    id: str | int
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = 256


# -- LoRA adapters (vLLM's runtime loading routes) ---------------------------------------------------
class LoadLoraRequest(EdgeModel):
    lora_name: Text
    lora_path: Text


class UnloadLoraRequest(EdgeModel):
    model_config = ConfigDict(extra="ignore")
    lora_name: Text
    lora_int_id: int | None = None  # vLLM's; accepted and ignored (adapters are named)
