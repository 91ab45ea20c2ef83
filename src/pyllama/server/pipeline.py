"""The chat pipeline every chat-shaped API stands on (/v1/chat/completions, /v1/responses,
/v1/messages convert their bodies to a ChatCompletionRequest first): the body as the front
end's ChatInput and options, rendering, and the submission."""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..engine import RequestStream
from ..frontend import ChatInput, GenerationOptions, Prepared
from .generation import start
from .schemas import ChatCompletionRequest
from .state import ServerState


def model_name(st: ServerState, requested: Optional[str]) -> str:
    return requested or st.config.model_name


def chat_input(req: ChatCompletionRequest) -> ChatInput:
    return ChatInput(messages=req.rendered_messages(), tools=req.tools, tool_choice=req.tool_choice,
                     parallel_tool_calls=req.parallel_tool_calls, response_format=req.response_format,
                     json_schema=req.json_schema, grammar=req.grammar, reasoning_format=req.reasoning_format,
                     reasoning_effort=req.reasoning_effort, chat_template_kwargs=req.chat_template_kwargs,
                     add_generation_prompt=req.add_generation_prompt)


def chat_max_tokens(req: ChatCompletionRequest) -> Optional[int]:
    return next((v for v in (req.max_completion_tokens, req.max_tokens, req.n_predict) if v is not None), None)


def prepare_chat(st: ServerState, req: ChatCompletionRequest) -> Prepared:
    """The engine requests of a chat body (front end; runs on the worker pool)."""
    n_top = (req.top_logprobs or 0) if req.logprobs else 0
    return st.fe.chat(chat_input(req), GenerationOptions.of(req), n=req.n, max_tokens=chat_max_tokens(req), stop=req.stop,
                      n_probs=n_top, logprobs=bool(req.logprobs))


async def start_chat(st: ServerState, req: ChatCompletionRequest) -> Tuple[Prepared, List[RequestStream]]:
    """Render a chat body, build its requests and submit them, off the event loop."""
    return await start(st, lambda: prepare_chat(st, req))


async def count_chat_tokens(st: ServerState, req: ChatCompletionRequest) -> int:
    """The number of tokens of a chat body's rendered prompt (the */input_tokens endpoints)."""
    return await st.workers.run(lambda: st.fe.count_chat_tokens(chat_input(req)))
