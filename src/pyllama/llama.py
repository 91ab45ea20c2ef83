"""The high-level synchronous API: ``Llama``, shaped like llama-cpp-python's.

Everything here is single-threaded over one context with one sequence; prompt tokens
already in the KV cache are reused between calls.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _core
from .engine.core import EngineCore
from .engine.request import Request, RequestKind, RequestOutput
from .engine.runner import LlamaRunner
from .errors import ContextLimitError, TokenizeError
from .frontend import formatting as fmt
from .frontend.bundle import ModelBundle, load_model, load_templates
from .frontend.chat import ChatDeltaParser, ChatInput, RenderedChat, new_id
from .frontend.requests import GenerationDefaults, GenerationOptions, stop_list
from .frontend.service import Frontend
from .params import DEFAULT_SEED, ContextParams, ModelParams, SamplingParams

logger = logging.getLogger("pyllama")

Prompt = Union[str, bytes, Sequence[int]]

# llama-cpp-python's default temperature for chat completions (completions use SamplingParams')
CHAT_TEMPERATURE = 0.2


class Llama:
    """A GGUF model with one context, for scripts.

    >>> llm = Llama("model.gguf", n_ctx=2048)
    >>> llm("Q: 2+2? A:", max_tokens=8)["choices"][0]["text"]
    """

    def __init__(
        self,
        model_path: Union[str, os.PathLike],
        *,
        n_gpu_layers: int = 0,
        split_mode: Union[str, int] = "layer",
        main_gpu: int = 0,
        tensor_split: Optional[Sequence[float]] = None,
        use_mmap: bool = True,
        use_mlock: bool = False,
        vocab_only: bool = False,
        check_tensors: bool = False,
        kv_overrides: Optional[Dict[str, Union[bool, int, float, str]]] = None,
        rpc_servers: Optional[Union[str, Sequence[str]]] = None,
        seed: int = DEFAULT_SEED,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_parallel: int = 1,
        n_threads: Optional[int] = None,
        n_threads_batch: Optional[int] = None,
        flash_attn: Union[str, bool] = "auto",
        type_k: Union[str, int] = "f16",
        type_v: Union[str, int] = "f16",
        embedding: bool = False,
        pooling_type: Union[str, int] = "unspecified",
        rope_freq_base: float = 0.0,
        rope_freq_scale: float = 0.0,
        chat_format: Optional[str] = None,
        chat_template: Optional[str] = None,
        lora_path: Optional[str] = None,
        lora_scale: float = 1.0,
        progress_callback: Optional[Callable[[float], Any]] = None,
        verbose: bool = False,
    ) -> None:
        self.verbose = verbose
        _core._set_log_bridge(True)
        if verbose and not logging.getLogger("pyllama.llama_cpp").handlers and not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO)
        self.model_path = os.fspath(model_path)
        self.model_params = ModelParams(
            n_gpu_layers=n_gpu_layers, split_mode=split_mode, main_gpu=main_gpu,
            tensor_split=tuple(tensor_split) if tensor_split else None, use_mmap=use_mmap,
            use_mlock=use_mlock, vocab_only=vocab_only, check_tensors=check_tensors,
            kv_overrides=kv_overrides, rpc_servers=rpc_servers)
        if isinstance(flash_attn, bool):
            flash_attn = "on" if flash_attn else "off"
        kw = {}
        if n_threads:
            kw["n_threads"] = n_threads
        self.context_params = ContextParams(
            n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(n_ubatch, n_batch),
            n_threads_batch=n_threads_batch or 0, flash_attn=flash_attn, type_k=type_k, type_v=type_v,
            embeddings=embedding, pooling_type=pooling_type, rope_freq_base=rope_freq_base,
            rope_freq_scale=rope_freq_scale, n_seq_max=n_parallel, kv_unified=True, **kw)
        self.seed = seed
        self._model = load_model(self.model_path, self.model_params, progress_callback=progress_callback)
        self._ctx: Optional[_core.Context] = None
        self._core: Optional[EngineCore] = None
        self._chat_override = chat_template or chat_format
        self._frontend: Optional[Frontend] = None
        self._lora = None
        if not vocab_only:
            self._ctx = _core.Context(self._model, self.context_params)
            # the same engine as the server's, stepped in this thread; slots share the whole context
            self._core = EngineCore(LlamaRunner(self._model, self._ctx, n_parallel, self._ctx.n_ctx))
            if lora_path:
                self._lora = _core.LoraAdapter(self._model, lora_path)
                self._ctx.set_lora_adapters([(self._lora, lora_scale)])

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def from_pretrained(cls, repo_id: str, filename: str, *, local_dir: Optional[str] = None,
                        cache_dir: Optional[str] = None, revision: Optional[str] = None, **kwargs: Any) -> "Llama":
        """Download ``filename`` from a Hugging Face repository (needs ``huggingface_hub``) and load it."""
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as e:  # pragma: no cover - optional dependency
            raise ImportError("Llama.from_pretrained needs huggingface_hub: pip install 'pyllama[hub]'") from e
        path = hf_hub_download(repo_id=repo_id, filename=filename, local_dir=local_dir,
                               cache_dir=cache_dir, revision=revision)
        return cls(path, **kwargs)

    def close(self) -> None:
        """Free the context and the model. Idempotent."""
        if self._frontend is not None:
            self._frontend.bundle.close()
            self._frontend = None
        if self._ctx is not None:
            self._ctx.close()
        if self._lora is not None:
            self._lora.close()
        self._model.close()
        self._core = None

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def model(self) -> "_core.Model":
        return self._model

    @property
    def ctx(self) -> "_core.Context":
        if self._ctx is None:
            raise ValueError("this Llama was loaded with vocab_only=True: it has no context")
        return self._ctx

    @property
    def metadata(self) -> Dict[str, str]:
        return self._model.metadata

    def n_ctx(self) -> int:
        return self.ctx.n_ctx

    def n_vocab(self) -> int:
        return self._model.vocab.n_vocab

    def n_embd(self) -> int:
        return self._model.n_embd

    def token_bos(self) -> Optional[int]:
        return self._model.vocab.bos

    def token_eos(self) -> Optional[int]:
        return self._model.vocab.eos

    # ------------------------------------------------------------------ tokens
    def tokenize(self, text: Union[str, bytes], add_bos: bool = True, special: bool = False) -> List[int]:
        return self._model.vocab.tokenize(text, add_special=add_bos, parse_special=special)

    def detokenize(self, tokens: Sequence[int], prev_tokens: Optional[Sequence[int]] = None,
                   special: bool = False) -> bytes:
        """Tokens to bytes (llama-cpp-python's signature). With prev_tokens, only the new part."""
        vocab = self._model.vocab
        if prev_tokens:
            full = vocab.detokenize_bytes(list(prev_tokens) + list(tokens), False, special)
            return full[len(vocab.detokenize_bytes(list(prev_tokens), False, special)):]
        return vocab.detokenize_bytes(list(tokens), False, special)

    def _prompt_tokens(self, prompt: Prompt, add_special: bool = True, parse_special: bool = True) -> List[int]:
        if isinstance(prompt, (str, bytes)):
            return self.tokenize(prompt, add_bos=add_special, special=parse_special)
        toks = [int(t) for t in prompt]
        n_vocab = self.n_vocab()
        for t in toks:
            if t < 0 or t >= n_vocab:
                raise TokenizeError(f"token id {t} out of range [0, {n_vocab})")
        return toks

    # ------------------------------------------------------------------ evaluation
    def reset(self) -> None:
        """Forget every cached prompt."""
        self._engine_core().reset_cache()

    def logits(self) -> np.ndarray:
        """Logits of the last row of the last decoded batch (a copy)."""
        return self.ctx.logits(-1, copy=True)

    def _engine_core(self) -> EngineCore:
        if self._core is None:
            raise ValueError("this Llama was loaded with vocab_only=True: it has no context")
        return self._core

    @property
    def frontend(self) -> Frontend:
        """The front end this Llama builds its requests with (model, templates, defaults)."""
        if self._frontend is None:
            bundle = ModelBundle(self._model, load_templates(self._model, self._chat_override), owns_model=False)
            self._frontend = Frontend(bundle, defaults=GenerationDefaults(sampling=SamplingParams(seed=self.seed)))
        return self._frontend

    def _request(self, prompt_tokens: List[int], options: GenerationOptions, sampling: SamplingParams,
                 max_tokens: Optional[int], stop: Sequence[str], n_logprobs: int) -> Request:
        """``n_logprobs``: -1 the chosen token's logprob only, N > 0 also the top N, 0 none."""
        return self.frontend.builder.requests([prompt_tokens], options, sampling, max_tokens=max_tokens,
                                              stop=stop, n_probs=max(n_logprobs, 0), logprobs=n_logprobs != 0)[0]

    def _generate(self, request: Request) -> Iterator[RequestOutput]:
        """One request through the engine core, in this thread; yields its deltas (the last is final)."""
        core = self._engine_core()
        st = core.add(request)
        rid = st.id
        try:
            while True:
                for o in core.step():
                    if o.request_id != rid:
                        continue
                    if o.finished and o.error is not None:
                        raise o.error
                    yield o
                    if o.finished:
                        return
        finally:
            if not st.status.finished:
                core.abort(rid)
                core.run_until_done({rid})

    def generate_batch(self, prompts: Sequence[Prompt], *, max_tokens: Optional[int] = 16,
                       stop: Optional[Union[str, List[str]]] = None, ignore_eos: bool = False,
                       seed: Optional[int] = None, **sampling: Any) -> List[Dict[str, Any]]:
        """Complete several prompts at once (continuous batching over ``n_parallel`` slots).

        Returns one OpenAI-shaped completion dict per prompt, in order. Sampling keywords are
        SamplingParams field names (temperature, top_k, top_p, ...); each prompt gets the same seed.
        """
        core = self._engine_core()
        options = GenerationOptions(seed=seed, ignore_eos=ignore_eos)
        sp = self.frontend.builder.sampling(options, **sampling)
        states = [core.add(self._request(self._prompt_tokens(p), options, sp, max_tokens, stop_list(stop), 0))
                  for p in prompts]
        texts: Dict[str, List[str]] = {st.id: [] for st in states}
        finals: Dict[str, RequestOutput] = {}
        for o in core.run_until_done({st.id for st in states}):
            if o.request_id in texts:
                texts[o.request_id].append(o.text)
                if o.finished:
                    finals[o.request_id] = o
        created = fmt.now()
        results = []
        for st in states:
            f = finals[st.id]
            if f.error is not None:
                raise f.error
            results.append(fmt.completion_object(new_id("cmpl"), created, self.model_path,
                                                 [fmt.completion_choice(0, "".join(texts[st.id]), f.finish_reason)],
                                                 usage=f.usage, timings=f.timings))
        return results

    @staticmethod
    def _options(temperature: Optional[float], top_p: Optional[float], min_p: Optional[float],
                 typical_p: Optional[float], top_k: Optional[int], frequency_penalty: Optional[float],
                 presence_penalty: Optional[float], repeat_penalty: Optional[float], mirostat_mode: Optional[int],
                 mirostat_tau: Optional[float], mirostat_eta: Optional[float], seed: Optional[int],
                 logit_bias: Optional[Dict[Any, float]], ignore_eos: bool, **extra: Any) -> GenerationOptions:
        """llama-cpp-python's keywords as the front end's options (None: SamplingParams' default)."""
        return GenerationOptions(temperature=temperature, top_p=top_p, min_p=min_p, typical_p=typical_p, top_k=top_k,
                                 frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                                 repeat_penalty=repeat_penalty, mirostat=mirostat_mode, mirostat_tau=mirostat_tau,
                                 mirostat_eta=mirostat_eta, seed=seed, logit_bias=logit_bias, ignore_eos=ignore_eos,
                                 **extra)

    def create_completion(
        self,
        prompt: Prompt,
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        typical_p: Optional[float] = None,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Optional[Union[str, List[str]]] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        top_k: Optional[int] = None,
        stream: bool = False,
        seed: Optional[int] = None,
        mirostat_mode: Optional[int] = None,
        mirostat_tau: Optional[float] = None,
        mirostat_eta: Optional[float] = None,
        model: Optional[str] = None,
        grammar: Optional[str] = None,
        logit_bias: Optional[Dict[Any, float]] = None,
        ignore_eos: bool = False,
        **sampling_extra: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """An OpenAI-shaped text completion (a dict, or an iterator of chunks when ``stream``).
        Sampling keywords left at None take ``SamplingParams``' defaults (llama-server's); other
        SamplingParams fields may be given as keywords too."""
        if suffix:
            raise NotImplementedError("suffix (fill-in-the-middle) is not supported by create_completion yet")
        if logprobs is not None and logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        options = self._options(temperature, top_p, min_p, typical_p, top_k, frequency_penalty, presence_penalty,
                                repeat_penalty, mirostat_mode, mirostat_tau, mirostat_eta, seed, logit_bias,
                                ignore_eos, grammar=grammar)
        sampling = self.frontend.builder.sampling(options, **sampling_extra)
        tokens = self._prompt_tokens(prompt)
        n_lp = 0 if logprobs is None else (-1 if logprobs == 0 else logprobs)
        request = self._request(tokens, options, sampling, max_tokens, stop_list(stop), n_lp)
        it = self._completion_chunks(request, prompt, echo, logprobs, model or self.model_path)
        if stream:
            return it
        return fmt.collect_completion(it)

    __call__ = create_completion

    def _completion_chunks(self, request: Request, prompt: Prompt, echo: bool, logprobs: Optional[int],
                           model: str) -> Iterator[Dict[str, Any]]:
        cid, created = new_id("cmpl"), fmt.now()
        vocab = self._model.vocab
        offset = 0

        def chunk(text: str, finish: Optional[str], lp: Any = None, usage: Any = None) -> Dict[str, Any]:
            extra = {"usage": usage} if usage is not None else {}
            return fmt.completion_object(cid, created, model, [fmt.completion_choice(0, text, finish, lp)], **extra)

        if echo:
            text = prompt if isinstance(prompt, str) else vocab.detokenize(list(request.prompt))
            offset += len(text)
            yield chunk(text, None)
        for o in self._generate(request):
            lp = None
            if logprobs is not None and o.logprobs:
                lp, offset = fmt.completion_logprobs(vocab, o.logprobs, offset, with_top=bool(logprobs))
            else:
                offset += len(o.text)
            if o.finished:
                if o.text or lp is not None:
                    yield chunk(o.text, None, lp)
                yield chunk("", o.finish_reason, None, o.usage)
            elif o.text or lp is not None:
                yield chunk(o.text, None, lp)

    # ------------------------------------------------------------------ chat
    @property
    def chat_templates(self) -> "_core.ChatTemplates":
        return self.frontend.bundle.templates

    def apply_chat_template(self, messages: List[Dict[str, Any]], *, tools: Optional[List[Dict[str, Any]]] = None,
                            tool_choice: Any = None, add_generation_prompt: bool = True,
                            **kwargs: Any) -> RenderedChat:
        """Render messages with the model's template (ChatInput's other fields as keywords:
        response_format, json_schema, grammar, chat_template_kwargs, reasoning_format, ...)."""
        return self.frontend.render(ChatInput(messages=messages, tools=tools or None, tool_choice=tool_choice,
                                              add_generation_prompt=add_generation_prompt, **kwargs))

    def create_chat_completion(
        self,
        messages: List[Dict[str, Any]],
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: Any = None,
        parallel_tool_calls: Optional[bool] = None,
        temperature: Optional[float] = CHAT_TEMPERATURE,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        min_p: Optional[float] = None,
        typical_p: Optional[float] = None,
        stream: bool = False,
        stop: Optional[Union[str, List[str]]] = None,
        seed: Optional[int] = None,
        response_format: Optional[Dict[str, Any]] = None,
        max_tokens: Optional[int] = None,
        presence_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        repeat_penalty: Optional[float] = None,
        mirostat_mode: Optional[int] = None,
        mirostat_tau: Optional[float] = None,
        mirostat_eta: Optional[float] = None,
        model: Optional[str] = None,
        logit_bias: Optional[Dict[Any, float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        grammar: Optional[str] = None,
        chat_template_kwargs: Optional[Dict[str, Any]] = None,
        reasoning_format: Optional[str] = None,
        ignore_eos: bool = False,
        reasoning_budget: Optional[int] = None,
        reasoning_budget_message: Optional[str] = None,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """An OpenAI-shaped chat completion (tools, response_format, streaming).

        ``reasoning_budget``: at most this many tokens of reasoning (between the template's thinking
        tags, e.g. ``<think>`` and ``</think>``), then ``reasoning_budget_message`` and the end tag are
        forced and the answer follows; 0 ends the reasoning at once, None or -1 leaves it unlimited
        (llama-server's ``--reasoning-budget`` / ``reasoning_budget_tokens``). It has no effect with a
        template that has no thinking tags."""
        chat = ChatInput(messages=messages, tools=tools or None, tool_choice=tool_choice,
                         parallel_tool_calls=parallel_tool_calls, response_format=response_format, grammar=grammar,
                         chat_template_kwargs=chat_template_kwargs, reasoning_format=reasoning_format)
        options = self._options(temperature, top_p, min_p, typical_p, top_k, frequency_penalty, presence_penalty,
                                repeat_penalty, mirostat_mode, mirostat_tau, mirostat_eta, seed, logit_bias,
                                ignore_eos, reasoning_budget_tokens=reasoning_budget,
                                reasoning_budget_message=reasoning_budget_message)
        n_lp = ((top_logprobs or -1) if top_logprobs is not None else 0) if logprobs else 0
        prepared = self.frontend.chat(chat, options, max_tokens=max_tokens, stop=stop, n_probs=max(n_lp, 0),
                                      logprobs=n_lp != 0)
        it = self._chat_chunks(prepared.requests[0], prepared.rendered, model or self.model_path)
        if stream:
            return it
        return fmt.collect_chat(it)

    def _chat_chunks(self, request: Request, rendered: RenderedChat, model: str) -> Iterator[Dict[str, Any]]:
        cid, created = new_id("chatcmpl"), fmt.now()
        parser = ChatDeltaParser(rendered.syntax)
        vocab = self._model.vocab
        text_so_far: List[str] = []

        yield fmt.chat_chunk(cid, created, model, 0, {"role": "assistant", "content": None})
        final = None
        for o in self._generate(request):
            text_so_far.append(o.text)
            lp = fmt.chat_logprobs(vocab, o.logprobs) if request.logprobs else None
            for delta in parser.feed("".join(text_so_far), partial=not o.finished):
                yield fmt.chat_chunk(cid, created, model, 0, delta, None, lp)
                lp = None
            if lp is not None:
                yield fmt.chat_chunk(cid, created, model, 0, {}, None, lp)
            if o.finished:
                final = o
        assert final is not None
        last = fmt.chat_chunk(cid, created, model, 0, {}, fmt.chat_finish_reason(final.finish_reason, parser.n_calls))
        last["usage"] = final.usage
        last["timings"] = final.timings
        yield last

    # ------------------------------------------------------------------ embeddings
    def embed(self, input: Union[str, List[str]], normalize: bool = False, truncate: bool = True,
              return_count: bool = False) -> Any:
        """Embeddings of one text or a list: pooled as the model says, or one per token (pooling none).

        Inputs are batched together through the engine's slots.
        """
        core = self._engine_core()
        if not self.context_params.embeddings:
            raise ValueError("create the Llama with embedding=True to compute embeddings")
        single = isinstance(input, str)
        texts = [input] if single else list(input)
        limit = min(self.ctx.n_batch, self.ctx.n_ubatch)
        pooled = self.ctx.pooling_type != 0
        reqs = []
        for text in texts:
            toks = self.tokenize(text, add_bos=True, special=False)
            if len(toks) > limit:
                if not truncate:
                    raise ContextLimitError(f"input has {len(toks)} tokens, more than the limit of {limit} "
                                            f"(n_batch, n_ubatch)", n_tokens=len(toks), n_ctx=limit)
                toks = toks[:limit]
            reqs.append(Request(prompt=tuple(toks), kind=RequestKind.EMBED, pooled=pooled, cache_prompt=False,
                                embd_normalize=2 if normalize else -1))
        for r in reqs:
            core.add(r)
        finals = {o.request_id: o for o in core.run_until_done({r.id for r in reqs}) if o.finished}
        out = []
        for r in reqs:
            f = finals[r.id]
            if f.error is not None:
                raise f.error
            out.append(f.embedding)
        total = sum(len(r.prompt) for r in reqs)
        res = out[0] if single else out
        return (res, total) if return_count else res

    def create_embedding(self, input: Union[str, List[str]], model: Optional[str] = None) -> Dict[str, Any]:
        data, count = self.embed(input, return_count=True)
        items = [data] if isinstance(input, str) else data
        return {"object": "list", "model": model or self.model_path,
                "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(items)],
                "usage": {"prompt_tokens": count, "total_tokens": count}}


__all__ = ["Llama"]
