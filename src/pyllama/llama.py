"""The high-level synchronous API: ``Llama``, shaped like llama-cpp-python's.

Everything here is single-threaded over one context with one sequence; prompt tokens
already in the KV cache are reused between calls.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from . import _core
from .chat import (ChatDeltaParser, chat_reasoning_extras, chat_stops, collect_chat,
                   json_schema_from_response_format, new_id, sampling_extras, token_logprob_entry)
from .engine.core import EngineCore
from .engine.request import Request, RequestKind, RequestOutput
from .engine.runner import LlamaRunner
from .errors import ContextLimitError, TokenizeError
from .params import DEFAULT_SEED, ContextParams, ModelParams, SamplingParams

logger = logging.getLogger("pyllama")

Prompt = Union[str, bytes, Sequence[int]]


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
        self._model = _core.Model(self.model_path, self.model_params, progress_callback=progress_callback)
        self._ctx: Optional[_core.Context] = None
        self._core: Optional[EngineCore] = None
        self._chat: Optional[_core.ChatTemplates] = None
        self._chat_override = chat_template or chat_format
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
        if self._chat is not None:
            self._chat.close()
            self._chat = None
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

    def _request(self, prompt_tokens: List[int], sampling: SamplingParams, max_tokens: Optional[int],
                 stop: Sequence[str], ignore_eos: bool, n_logprobs: int) -> Request:
        return Request(prompt=tuple(prompt_tokens), sampling=sampling,
                       max_tokens=-1 if max_tokens is None or max_tokens < 0 else max_tokens,
                       stop=tuple(stop), ignore_eos=ignore_eos, n_probs=max(n_logprobs, 0),
                       logprobs=n_logprobs != 0)

    def _generate(self, prompt_tokens: List[int], sampling: SamplingParams, max_tokens: Optional[int],
                  stop: Sequence[str], ignore_eos: bool, n_logprobs: int = 0) -> Iterator[RequestOutput]:
        """One request through the engine core, in this thread; yields its deltas (the last is final)."""
        core = self._engine_core()
        st = core.add(self._request(prompt_tokens, sampling, max_tokens, stop, ignore_eos, n_logprobs))
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
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        sp = SamplingParams(seed=self.seed if seed is None else seed, **sampling)
        states = [core.add(self._request(self._prompt_tokens(p), sp, max_tokens, stops, ignore_eos, 0))
                  for p in prompts]
        texts: Dict[str, List[str]] = {st.id: [] for st in states}
        finals: Dict[str, RequestOutput] = {}
        for o in core.run_until_done({st.id for st in states}):
            if o.request_id in texts:
                texts[o.request_id].append(o.text)
                if o.finished:
                    finals[o.request_id] = o
        created = int(time.time())
        results = []
        for st in states:
            f = finals[st.id]
            if f.error is not None:
                raise f.error
            results.append({"id": new_id("cmpl"), "object": "text_completion", "created": created,
                            "model": self.model_path,
                            "choices": [{"text": "".join(texts[st.id]), "index": 0, "logprobs": None,
                                         "finish_reason": f.finish_reason}],
                            "usage": f.usage, "timings": f.timings})
        return results

    def _sampling(self, temperature: float, top_p: float, min_p: float, typical_p: float, top_k: int,
                  frequency_penalty: float, presence_penalty: float, repeat_penalty: float,
                  mirostat_mode: int, mirostat_tau: float, mirostat_eta: float, seed: Optional[int],
                  grammar: Optional[str], logit_bias: Optional[Dict[Any, float]], **extra: Any) -> SamplingParams:
        bias = tuple((int(k), float(v)) for k, v in (logit_bias or {}).items())
        return SamplingParams(
            temperature=temperature, top_p=top_p, min_p=min_p, typical_p=typical_p, top_k=top_k,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            repeat_penalty=repeat_penalty, mirostat=mirostat_mode, mirostat_tau=mirostat_tau,
            mirostat_eta=mirostat_eta, seed=self.seed if seed is None else seed,
            grammar=grammar, logit_bias=bias, **extra)

    def create_completion(
        self,
        prompt: Prompt,
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: float = 0.8,
        top_p: float = 0.95,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Optional[Union[str, List[str]]] = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = 40,
        stream: bool = False,
        seed: Optional[int] = None,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
        model: Optional[str] = None,
        grammar: Optional[str] = None,
        logit_bias: Optional[Dict[Any, float]] = None,
        ignore_eos: bool = False,
        **sampling_extra: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """An OpenAI-shaped text completion (a dict, or an iterator of chunks when ``stream``)."""
        if suffix:
            raise NotImplementedError("suffix (fill-in-the-middle) is not supported by create_completion yet")
        sampling = self._sampling(temperature, top_p, min_p, typical_p, top_k, frequency_penalty,
                                  presence_penalty, repeat_penalty, mirostat_mode, mirostat_tau,
                                  mirostat_eta, seed, grammar, logit_bias, **sampling_extra)
        if logprobs is not None and logprobs < 0:
            raise ValueError("logprobs must be >= 0")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        tokens = self._prompt_tokens(prompt)
        it = self._completion_chunks(tokens, prompt, sampling, max_tokens, stops, echo, logprobs,
                                     model or self.model_path, ignore_eos)
        if stream:
            return it
        return self._collect_completion(it)

    __call__ = create_completion

    def _completion_chunks(self, tokens: List[int], prompt: Prompt, sampling: SamplingParams,
                           max_tokens: Optional[int], stops: List[str], echo: bool,
                           logprobs: Optional[int], model: str, ignore_eos: bool) -> Iterator[Dict[str, Any]]:
        cid = new_id("cmpl")
        created = int(time.time())
        vocab = self._model.vocab
        offset = 0

        def chunk(text: str, finish: Optional[str], lp: Any = None, usage: Any = None) -> Dict[str, Any]:
            c: Dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model,
                                 "choices": [{"text": text, "index": 0, "logprobs": lp, "finish_reason": finish}]}
            if usage is not None:
                c["usage"] = usage
            return c

        if echo:
            text = prompt if isinstance(prompt, str) else vocab.detokenize(tokens)
            offset += len(text)
            yield chunk(text, None)
        n_lp = -1 if logprobs == 0 else (logprobs or 0)
        for o in self._generate(tokens, sampling, max_tokens, stops, ignore_eos, n_lp):
            lp = None
            if logprobs is not None and o.logprobs:
                pieces = [vocab.token_to_piece(t.token, special=False).decode("utf-8", "replace") for t in o.logprobs]
                offs = []
                for p in pieces:
                    offs.append(offset)
                    offset += len(p)
                lp = {"tokens": pieces, "text_offset": offs, "token_logprobs": [t.logprob for t in o.logprobs],
                      "top_logprobs": [{vocab.token_to_piece(k, special=False).decode("utf-8", "replace"): v
                                        for k, v in t.top} if logprobs else None for t in o.logprobs]}
            else:
                offset += len(o.text)
            if o.finished:
                if o.text or lp is not None:
                    yield chunk(o.text, None, lp)
                yield chunk("", o.finish_reason, None, o.usage)
            elif o.text or lp is not None:
                yield chunk(o.text, None, lp)

    @staticmethod
    def _collect_completion(chunks: Iterator[Dict[str, Any]]) -> Dict[str, Any]:
        text: List[str] = []
        lps: Optional[Dict[str, List[Any]]] = None
        last: Dict[str, Any] = {}
        for c in chunks:
            last = c
            ch = c["choices"][0]
            text.append(ch["text"])
            if ch["logprobs"]:
                if lps is None:
                    lps = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
                for k in lps:
                    lps[k].extend(ch["logprobs"][k])
        out = dict(last)
        out["choices"] = [{"text": "".join(text), "index": 0, "logprobs": lps,
                           "finish_reason": last["choices"][0]["finish_reason"]}]
        return out

    # ------------------------------------------------------------------ chat
    @property
    def chat_templates(self) -> "_core.ChatTemplates":
        if self._chat is None:
            override = self._chat_override
            if not override and self._model.chat_template() is None:
                override = "chatml"
            self._chat = _core.ChatTemplates(self._model, override or "")
        return self._chat

    def apply_chat_template(self, messages: List[Dict[str, Any]], *, tools: Optional[List[Dict[str, Any]]] = None,
                            tool_choice: Any = None, add_generation_prompt: bool = True,
                            **kwargs: Any) -> Dict[str, Any]:
        """Render messages with the model's template; returns the shim's dict (prompt, grammar, ...)."""
        req: Dict[str, Any] = {"messages": messages, "add_generation_prompt": add_generation_prompt}
        if tools:
            req["tools"] = tools
        if tool_choice is not None:
            req["tool_choice"] = tool_choice
        req.update({k: v for k, v in kwargs.items() if v is not None})
        return self.chat_templates.render(req)

    def create_chat_completion(
        self,
        messages: List[Dict[str, Any]],
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: Any = None,
        parallel_tool_calls: Optional[bool] = None,
        temperature: float = 0.2,
        top_p: float = 0.95,
        top_k: int = 40,
        min_p: float = 0.05,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: Optional[Union[str, List[str]]] = None,
        seed: Optional[int] = None,
        response_format: Optional[Dict[str, Any]] = None,
        max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        mirostat_mode: int = 0,
        mirostat_tau: float = 5.0,
        mirostat_eta: float = 0.1,
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
        json_schema = json_schema_from_response_format(response_format)
        if json_schema is not None and grammar:
            raise ValueError("use either grammar or response_format, not both")
        rendered = self.apply_chat_template(
            messages, tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
            json_schema=json_schema, grammar=grammar, chat_template_kwargs=chat_template_kwargs,
            reasoning_format=reasoning_format)
        extra = sampling_extras(rendered, self._model.vocab)
        extra.update(chat_reasoning_extras(rendered, self._model.vocab,
                                           budget=-1 if reasoning_budget is None else reasoning_budget,
                                           message=reasoning_budget_message or ""))
        sampling = self._sampling(temperature, top_p, min_p, typical_p, top_k, frequency_penalty,
                                  presence_penalty, repeat_penalty, mirostat_mode, mirostat_tau,
                                  mirostat_eta, seed, extra.pop("grammar", None), logit_bias, **extra)
        stops = chat_stops(stop, rendered)
        tokens = self._prompt_tokens(rendered["prompt"], add_special=True, parse_special=True)
        it = self._chat_chunks(tokens, rendered, sampling, max_tokens, stops, model or self.model_path,
                               ignore_eos, top_logprobs if logprobs else None)
        if stream:
            return it
        return collect_chat(it)

    def _chat_chunks(self, tokens: List[int], rendered: Dict[str, Any], sampling: SamplingParams,
                     max_tokens: Optional[int], stops: List[str], model: str, ignore_eos: bool,
                     top_logprobs: Optional[int]) -> Iterator[Dict[str, Any]]:
        cid = new_id("chatcmpl")
        created = int(time.time())
        parser = ChatDeltaParser(rendered.get("syntax"))
        vocab = self._model.vocab
        text_so_far: List[str] = []

        def chunk(delta: Dict[str, Any], finish: Optional[str] = None, lp: Any = None) -> Dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": None})
        n_lp = (top_logprobs or -1) if top_logprobs is not None else 0
        final = None
        for o in self._generate(tokens, sampling, max_tokens, stops, ignore_eos, n_lp):
            text_so_far.append(o.text)
            lp = None
            if top_logprobs is not None and o.logprobs:
                lp = {"content": [token_logprob_entry(vocab, t.token, t.logprob, t.top) for t in o.logprobs]}
            for delta in parser.feed("".join(text_so_far), partial=not o.finished):
                yield chunk(delta, None, lp)
                lp = None
            if lp is not None:
                yield chunk({}, None, lp)
            if o.finished:
                final = o
        assert final is not None
        finish = final.finish_reason
        if parser.n_calls and finish == "stop":
            finish = "tool_calls"
        last = chunk({}, finish)
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
