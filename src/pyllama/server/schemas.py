"""Pydantic request models (validation at the edge) and the OpenAPI document built from them.

Field names follow llama-server and OpenAI. Unknown fields are accepted and ignored on every
endpoint, as llama-server does, so OpenAI clients and llama.cpp clients can send what they know.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from typing_extensions import Annotated

from ..frontend.limits import FIELD_LIMITS as L
from ..params import FLT_MAX, INT32_MAX, INT32_MIN     # a request's numbers reach llama.cpp as int32 and float

Token = Annotated[StrictInt, Field(ge=INT32_MIN, le=INT32_MAX)]   # true is not token 1
TokenOrText = Union[Token, str]
Prompt1 = Union[str, Annotated[List[TokenOrText], Field(max_length=L.max_prompt_tokens)]]
PromptT = Union[Prompt1, Annotated[List[Prompt1], Field(max_length=L.max_prompts)]]
EmbeddingInputT = Union[str, Annotated[List[str], Field(max_length=L.max_prompts)],
                        Annotated[List[Token], Field(max_length=L.max_prompt_tokens)],
                        Annotated[List[Annotated[List[Token], Field(max_length=L.max_prompt_tokens)]],
                                  Field(max_length=L.max_prompts)]]
Bias = Union[bool, Annotated[float, Field(allow_inf_nan=False, ge=-FLT_MAX, le=FLT_MAX)]]
StopT = Union[Annotated[str, Field(max_length=L.max_stop_chars)],
              Annotated[List[Annotated[str, Field(max_length=L.max_stop_chars)]], Field(max_length=L.max_stops)]]


def f32(lo: float = -FLT_MAX, hi: float = FLT_MAX, **kw: Any) -> Any:
    """An optional finite number llama.cpp can hold as a float."""
    return Field(default=None, allow_inf_nan=False, ge=lo, le=hi, **kw)


def i32(lo: int = INT32_MIN, hi: int = INT32_MAX, default: Any = None) -> Any:
    """An optional integer llama.cpp can hold as an int32 (llama-server's hard limits where it has them)."""
    return Field(default=default, ge=lo, le=hi)


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SamplingFields(_Base):
    """The llama-server sampling fields, accepted on every generation endpoint."""

    temperature: Optional[float] = f32()
    dynatemp_range: Optional[float] = f32()
    dynatemp_exponent: Optional[float] = f32()
    top_k: Optional[int] = i32()
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    typical_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_n_sigma: Optional[float] = f32()
    xtc_probability: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    xtc_threshold: Optional[float] = f32()
    mirostat: Optional[Literal[0, 1, 2]] = None
    mirostat_tau: Optional[float] = f32()
    mirostat_eta: Optional[float] = f32()
    repeat_penalty: Optional[float] = f32(gt=0.0, lo=None)
    repeat_last_n: Optional[int] = i32(-1)     # -1: the context size
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    dry_multiplier: Optional[float] = f32(0.0)
    dry_base: Optional[float] = f32()
    dry_allowed_length: Optional[int] = i32(0)
    dry_penalty_last_n: Optional[int] = i32(-1)
    dry_sequence_breakers: Optional[List[Annotated[str, Field(max_length=L.max_stop_chars)]]] = Field(
        default=None, max_length=L.max_dry_sequence_breakers)
    min_keep: Optional[int] = i32(0)
    seed: Optional[int] = Field(default=None, ge=-1, le=0xFFFFFFFF)
    logit_bias: Optional[Union[Dict[str, Bias], List[List[Any]]]] = None   # list entries: frontend.prompts
    grammar: Optional[str] = None
    json_schema: Optional[Dict[str, Any]] = None
    ignore_eos: bool = False
    n_probs: Optional[int] = Field(default=None, ge=0, le=100)
    post_sampling_probs: bool = False   # n_probs from the sampling chain's candidates, as probabilities
    samplers: Optional[Union[Annotated[List[str], Field(max_length=L.max_samplers)],
                             Annotated[str, Field(max_length=16 * L.max_samplers)]]] = None
    stop: Optional[StopT] = None
    cache_prompt: Optional[bool] = None
    n_cache_reuse: Optional[int] = Field(default=None, ge=0, le=2**31 - 1)   # default: --cache-reuse
    id_slot: int = i32(-1, default=-1)
    n_keep: Optional[int] = i32(-1)
    return_tokens: bool = False
    timings_per_token: bool = False
    lora: Optional[List[Dict[str, Any]]] = Field(default=None, max_length=L.max_lora_entries)   # [{"id": N, "scale": S}] (see generation.request_lora)
    # reasoning budget (llama-server's server-schema.cpp): on the chat endpoint the tags and the
    # generation prompt come from the chat template; elsewhere they can be given here
    reasoning_budget_tokens: Optional[StrictInt] = Field(default=None, ge=-1, le=INT32_MAX)
    reasoning_budget_message: Optional[str] = Field(default=None, max_length=L.max_stop_chars)
    reasoning_budget_start_tag: Optional[str] = Field(default=None, max_length=L.max_stop_chars)
    reasoning_budget_end_tags: Optional[List[str]] = Field(default=None, max_length=L.max_stops)
    reasoning_budget_end_tag: Optional[str] = Field(default=None, max_length=L.max_stop_chars)
    generation_prompt: Optional[str] = Field(default=None, max_length=L.max_stop_chars)
    reasoning_control: bool = False


class CompletionRequest(SamplingFields):
    """POST /completion (llama-server's native endpoint)."""

    prompt: PromptT
    n_predict: Optional[int] = i32(-1)
    max_tokens: Optional[int] = i32(-1)
    stream: bool = False
    n_cmpl: int = i32(1, default=1)         # at most the slot count (frontend Limits)


class StreamOptions(_Base):
    include_usage: bool = False


class OAICompletionRequest(SamplingFields):
    """POST /v1/completions."""

    model: Optional[str] = None
    prompt: PromptT
    max_tokens: Optional[int] = i32(-1, default=16)
    n: int = i32(1, default=1)              # at most the slot count (frontend Limits)
    logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    echo: bool = False
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    suffix: Optional[str] = None
    user: Optional[str] = None


class ChatMessage(_Base):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, List[Dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None


class ChatCompletionRequest(SamplingFields):
    """POST /v1/chat/completions."""

    model: Optional[str] = None
    messages: List[ChatMessage] = Field(min_length=1)
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[Dict[str, Any]] = None
    max_tokens: Optional[int] = i32(-1)
    max_completion_tokens: Optional[int] = i32(-1)
    n_predict: Optional[int] = i32(-1)
    n: int = i32(1, default=1)              # at most the slot count (frontend Limits)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    add_generation_prompt: bool = True
    reasoning_format: Optional[str] = None
    reasoning_effort: Optional[str] = None
    thinking_budget_tokens: Optional[StrictInt] = Field(default=None, ge=-1, le=INT32_MAX)  # alias (Anthropic's)
    user: Optional[str] = None

    def rendered_messages(self) -> List[Dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class ResponsesRequest(_Base):
    """POST /v1/responses (OpenAI's Responses API): converted to a chat completions request, as
    llama-server does; the chat request's sampling fields are accepted too."""

    model: Optional[str] = None
    input: Union[str, List[Dict[str, Any]]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = i32(-1)
    temperature: Optional[float] = f32()
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    reasoning: Optional[Dict[str, Any]] = None
    text: Optional[Dict[str, Any]] = None
    stream: bool = False
    previous_response_id: Optional[str] = None


class AnthropicMessage(_Base):
    role: str
    content: Optional[Union[str, List[Dict[str, Any]]]] = None


class MessagesRequest(_Base):
    """POST /v1/messages (Anthropic's Messages API): converted to a chat completions request, as
    llama-server does. max_tokens defaults to 4096 (llama-server's; Anthropic requires it)."""

    model: Optional[str] = None
    messages: List[AnthropicMessage]
    max_tokens: Optional[int] = i32(-1)
    system: Optional[Union[str, List[Dict[str, Any]]]] = None
    temperature: Optional[float] = f32()
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_k: Optional[int] = i32()
    stop_sequences: Optional[List[Annotated[str, Field(max_length=L.max_stop_chars)]]] = Field(
        default=None, max_length=L.max_stops)
    stream: bool = False
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Dict[str, Any]] = None
    thinking: Optional[Dict[str, Any]] = None
    metadata: Optional[Dict[str, Any]] = None
    chat_template_kwargs: Optional[Dict[str, Any]] = None


class EmbeddingRequest(_Base):
    """POST /v1/embeddings and /embedding(s)."""

    input: Optional[EmbeddingInputT] = None
    content: Optional[EmbeddingInputT] = None     # llama-server's /embedding
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    embd_normalize: Optional[int] = i32(-1, L.max_embd_normalize)  # -1 none, 0 max-abs, 1 taxicab, 2 euclid, >2 p-norm

    def inputs(self) -> Any:
        v = self.input if self.input is not None else self.content
        if v is None:
            raise ValueError('"input" (or "content") is required')
        return v


class TokenizeRequest(_Base):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Base):
    tokens: List[Token] = Field(max_length=L.max_prompt_tokens)


class ApplyTemplateRequest(_Base):
    messages: List[ChatMessage] = Field(min_length=1)
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    add_generation_prompt: bool = True


class RerankRequest(_Base):
    query: str
    documents: List[str] = Field(min_length=1, max_length=L.max_prompts)
    top_n: Optional[int] = i32(1)
    return_text: bool = False
    model: Optional[str] = None


class InfillRequest(SamplingFields):
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: List[Dict[str, str]] = Field(default_factory=list)
    prompt: str = ""
    n_predict: Optional[int] = i32(-1)
    stream: bool = False


class LoraItem(_Base):
    id: int = Field(ge=0, le=INT32_MAX)
    scale: float = Field(allow_inf_nan=False, ge=-FLT_MAX, le=FLT_MAX)


class ChatControlRequest(_Base):
    """POST /v1/chat/completions/control: act on a running chat completion."""

    id: Optional[str] = None
    action: Optional[str] = None
    model: Optional[str] = None


class ErrorBody(_Base):
    code: int
    message: str
    type: str


class ErrorResponse(_Base):
    error: ErrorBody


REQUEST_MODELS = {
    ("post", "/completion"): CompletionRequest,
    ("post", "/v1/completions"): OAICompletionRequest,
    ("post", "/v1/chat/completions"): ChatCompletionRequest,
    ("post", "/v1/chat/completions/control"): ChatControlRequest,
    ("post", "/v1/chat/completions/input_tokens"): ChatCompletionRequest,
    ("post", "/v1/responses"): ResponsesRequest,
    ("post", "/v1/responses/input_tokens"): ResponsesRequest,
    ("post", "/v1/messages"): MessagesRequest,
    ("post", "/v1/messages/count_tokens"): MessagesRequest,
    ("post", "/v1/embeddings"): EmbeddingRequest,
    ("post", "/embedding"): EmbeddingRequest,
    ("post", "/tokenize"): TokenizeRequest,
    ("post", "/detokenize"): DetokenizeRequest,
    ("post", "/apply-template"): ApplyTemplateRequest,
    ("post", "/reranking"): RerankRequest,
    ("post", "/infill"): InfillRequest,
}


def openapi_document(title: str = "pyllama server", version: str = "0") -> Dict[str, Any]:
    """An OpenAPI 3.1 document from the request models (responses are described as JSON objects)."""
    schemas: Dict[str, Any] = {}
    paths: Dict[str, Any] = {}

    def ref(model: type) -> Dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    err = ref(ErrorResponse)
    errors = {str(c): {"description": d, "content": {"application/json": {"schema": err}}}
              for c, d in ((400, "invalid request"), (401, "missing or wrong API key"),
                           (404, "not found"), (501, "not supported"), (503, "unavailable"))}
    for (method, path), model in REQUEST_MODELS.items():
        paths.setdefault(path, {})[method] = {
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref(model)}}},
            "responses": {"200": {"description": "OK (JSON, or text/event-stream when streaming)",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **errors},
        }
    for path in ("/health", "/v1/models", "/props", "/slots", "/metrics", "/lora-adapters"):
        paths.setdefault(path, {})["get"] = {"responses": {"200": {"description": "OK"}, **errors}}
    paths["/props"]["post"] = {"description": "change global properties (needs --props; none accepted yet)",
                               "responses": {"200": {"description": "OK: {\"success\": true}"}, **errors}}
    return {"openapi": "3.1.0", "info": {"title": title, "version": version}, "paths": paths,
            "components": {"schemas": schemas}}
