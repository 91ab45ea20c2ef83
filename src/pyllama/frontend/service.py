"""``Frontend``: the protocol-neutral layer between the APIs (the server's, ``Llama``) and the
engine. It owns a model bundle, turns text, chats and request fields into engine ``Request``s
and runs that CPU-bound work on its worker pool, so an event loop never waits on it."""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import os
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, TypeVar

from .. import _core
from ..engine import Request
from ..errors import InvalidRequestError
from ..threads import deep_stacks
from .bundle import ModelBundle
from .limits import Limits
from .chat import ChatDefaults, ChatInput, RenderedChat, chat_stops, render_chat
from .prompts import (embedding_inputs, infill_prompt, prompt_tokens, rerank_prompts,
                      token_pieces)
from .requests import GenerationDefaults, GenerationOptions, RequestBuilder, stop_list

T = TypeVar("T")


class Workers:
    """The thread pool where CPU-bound request work runs (tokenizing, rendering, compiling
    grammars, parsing and serializing large bodies). llama.cpp releases the GIL in that work, so
    the event loop keeps answering while it runs."""

    def __init__(self, n: Optional[int] = None):
        self.n = n or min(4, os.cpu_count() or 1)
        self._pool = concurrent.futures.ThreadPoolExecutor(self.n, thread_name_prefix="pyllama-frontend")

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with deep_stacks():     # the pool starts its threads in submit: each gets a deep stack
            fut = self._pool.submit(functools.partial(fn, *args, **kwargs))
        return await asyncio.wrap_future(fut)

    def close(self, wait: float = 0.0) -> bool:
        """Stop the pool: queued work is cancelled, running work is not waited for (a worker may
        be inside a long C call, and the interpreter joins these threads at exit). With ``wait``,
        wait up to that many seconds for the running work to end. True when none is left."""
        import threading
        self._pool.shutdown(wait=False, cancel_futures=True)
        joiner = threading.Thread(target=self._pool.shutdown, name="pyllama-frontend-close", daemon=True)
        joiner.start()
        joiner.join(max(0.0, wait))
        return not joiner.is_alive()


@dataclass(frozen=True)
class Prepared:
    """Engine requests built from one API request (``n`` per prompt, in order)."""

    requests: List[Request]
    prompts: List[List[int]]
    rendered: Optional[RenderedChat] = None     # chat requests: what the template made


class Frontend:
    """One model bundle, its defaults and a worker pool. The methods are synchronous and safe to
    call from any thread; ``run`` calls one on the pool."""

    def __init__(self, bundle: ModelBundle, *, defaults: GenerationDefaults = GenerationDefaults(),
                 chat_defaults: ChatDefaults = ChatDefaults(), workers: Optional[Workers] = None,
                 limits: Limits = Limits()):
        self.bundle = bundle
        self.vocab: "_core.Vocab" = bundle.vocab
        self.defaults = defaults
        self.chat_defaults = chat_defaults
        self.limits = limits
        self.builder = RequestBuilder(self.vocab, defaults, n_adapters=len(bundle.loras), limits=limits)
        self.workers = workers

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args)`` on the worker pool (inline when there is none)."""
        if self.workers is None:
            return fn(*args, **kwargs)
        return await self.workers.run(fn, *args, **kwargs)

    # ---- text ----
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = False) -> List[int]:
        return self.vocab.tokenize(text, add_special=add_special, parse_special=parse_special)

    def tokenize_json(self, text: str, add_special: bool = True, parse_special: bool = False) -> bytes:
        """``{"tokens": [...]}`` as /tokenize answers it, written in pieces: a single conversion of
        millions of ids would hold the GIL (and stall other threads) for its whole length."""
        toks = self.vocab.tokenize_array(text, add_special=add_special, parse_special=parse_special)
        step = 8192         # ~5 ms of conversion: the GIL changes hands between pieces
        parts = [", ".join(map(str, toks[i:i + step].tolist())).encode() for i in range(0, len(toks), step)]
        return b"".join((b'{"tokens": [', b", ".join(parts), b"]}"))

    def tokenize_with_pieces(self, text: str, add_special: bool, parse_special: bool) -> List[Any]:
        return token_pieces(self.vocab, self.tokenize(text, add_special, parse_special))

    def detokenize(self, tokens: Sequence[int], unparse_special: bool = True) -> str:
        """Token ids to text (an id out of range: TokenizeError, from the vocabulary itself)."""
        return self.vocab.detokenize(list(tokens), unparse_special=unparse_special)

    def embedding_inputs(self, value: Any) -> List[List[int]]:
        return embedding_inputs(self.vocab, value)

    def rerank_prompts(self, query: str, documents: Sequence[str]) -> List[List[int]]:
        return rerank_prompts(self.vocab, query, documents)

    def infill_prompt(self, prefix: str, suffix: str, prompt: str, extra: Sequence[Any] = ()) -> List[int]:
        return infill_prompt(self.vocab, prefix, suffix, prompt, extra)

    # ---- chat ----
    def render(self, chat: ChatInput) -> RenderedChat:
        return render_chat(self.bundle.templates, chat, self.chat_defaults, self.limits)

    def chat_prompt_tokens(self, rendered: RenderedChat) -> List[int]:
        return self.vocab.tokenize(rendered.prompt, add_special=True, parse_special=True)

    def count_chat_tokens(self, chat: ChatInput) -> int:
        """The number of tokens of a chat's rendered prompt."""
        return len(self.chat_prompt_tokens(self.render(chat)))

    # ---- requests ----
    def completion(self, prompt: Any, options: GenerationOptions, *, n: int = 1, max_tokens: Optional[int] = None,
                   stop: Any = None, n_probs: int = 0, logprobs: bool = False) -> Prepared:
        """A completion request: ``prompt`` in any of llama-server's shapes (or token lists)."""
        prompts = prompt_tokens(self.vocab, prompt)
        sampling = self.builder.sampling(options)
        reqs = self.builder.requests(prompts, options, sampling, n=n, max_tokens=max_tokens, stop=stop_list(stop),
                                     n_probs=n_probs, logprobs=logprobs)
        return Prepared(reqs, prompts)

    def chat(self, chat: ChatInput, options: GenerationOptions, *, n: int = 1, max_tokens: Optional[int] = None,
             stop: Any = None, n_probs: int = 0, logprobs: bool = False, **sampling_extra: Any) -> Prepared:
        """A chat request: rendered by the template, whose grammar, stops and reasoning tags join
        the request's sampling."""
        rendered = self.render(chat)
        sampling = self.builder.sampling(options, rendered, **sampling_extra)
        tokens = self.chat_prompt_tokens(rendered)
        if not tokens:
            raise InvalidRequestError("the rendered chat prompt is empty")
        reqs = self.builder.requests([tokens], options, sampling, n=n, max_tokens=max_tokens,
                                     stop=chat_stops(stop, rendered), n_probs=n_probs, logprobs=logprobs)
        return Prepared(reqs, [tokens], rendered)
