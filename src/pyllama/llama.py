"""The high-level synchronous API: ``Llama``, shaped like llama-cpp-python's.

Everything here is single-threaded over one context with one sequence; prompt tokens
already in the KV cache are reused between calls.
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core
from .detokenize import IncrementalDetokenizer, StopMatcher
from .errors import ChatTemplateError, ContextLimitError, TokenizeError
from .params import DEFAULT_SEED, ContextParams, ModelParams, SamplingParams

logger = logging.getLogger("pyllama")

Prompt = Union[str, bytes, Sequence[int]]


@dataclass
class _Step:
    token: int
    text: str
    logprob: Optional[float] = None
    top: Optional[List[Tuple[int, float]]] = None


@dataclass
class _Result:
    tokens: List[int] = field(default_factory=list)
    finish_reason: Optional[str] = None
    n_prompt: int = 0
    n_cached: int = 0


def _now_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


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
        seed: int = DEFAULT_SEED,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_ubatch: int = 512,
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
            kv_overrides=kv_overrides)
        if isinstance(flash_attn, bool):
            flash_attn = "on" if flash_attn else "off"
        kw = {}
        if n_threads:
            kw["n_threads"] = n_threads
        self.context_params = ContextParams(
            n_ctx=n_ctx, n_batch=n_batch, n_ubatch=min(n_ubatch, n_batch),
            n_threads_batch=n_threads_batch or 0, flash_attn=flash_attn, type_k=type_k, type_v=type_v,
            embeddings=embedding, pooling_type=pooling_type, rope_freq_base=rope_freq_base,
            rope_freq_scale=rope_freq_scale, **kw)
        self.seed = seed
        self._model = _core.Model(self.model_path, self.model_params, progress_callback=progress_callback)
        self._ctx: Optional[_core.Context] = None
        self._batch: Optional[_core.Batch] = None
        self._cached: List[int] = []   # tokens whose KV is in sequence 0
        self._chat: Optional[_core.ChatTemplates] = None
        self._chat_override = chat_template or chat_format
        self._lora = None
        if not vocab_only:
            self._ctx = _core.Context(self._model, self.context_params)
            self._batch = _core.Batch(self.context_params.n_batch)
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
        self._cached = []

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
        """Forget the cached prompt."""
        self.ctx.seq_rm(0)
        self._cached = []

    def _eval_prompt(self, tokens: List[int]) -> int:
        """Make the KV of seq 0 hold ``tokens`` and leave the last token's logits in row -1.

        Returns how many tokens were reused from the cache.
        """
        ctx, batch = self.ctx, self._batch
        n_ctx = ctx.n_ctx
        if len(tokens) == 0:
            raise ValueError("the prompt is empty")
        if len(tokens) >= n_ctx:
            raise ContextLimitError(
                f"the prompt has {len(tokens)} tokens but the context holds {n_ctx}",
                n_tokens=len(tokens), n_ctx=n_ctx)
        n_keep = 0
        for a, b in zip(self._cached, tokens):
            if a != b:
                break
            n_keep += 1
        n_keep = min(n_keep, len(tokens) - 1)  # always decode at least one token for logits
        if not ctx.seq_rm(0, n_keep, -1):
            ctx.seq_rm(0)
            n_keep = 0
        self._cached = tokens[:n_keep]
        pos = n_keep
        n_batch = batch.capacity
        while pos < len(tokens):
            chunk = tokens[pos:pos + n_batch]
            batch.clear()
            batch.add_sequence(chunk, pos, 0, pos + len(chunk) == len(tokens))
            ctx.decode(batch)
            self._cached.extend(chunk)
            pos += len(chunk)
        return n_keep

    def _decode_one(self, token: int) -> None:
        batch = self._batch
        batch.clear()
        batch.add(token, len(self._cached), 0, True)
        self.ctx.decode(batch)
        self._cached.append(token)

    def eval(self, tokens: Sequence[int]) -> None:
        """Append tokens to the cached sequence (llama-cpp-python's eval)."""
        self._eval_prompt(list(self._cached) + list(tokens))

    def logits(self) -> np.ndarray:
        """Logits after the last evaluated token (a copy)."""
        return self.ctx.logits(-1, copy=True)

    def _generate(self, prompt_tokens: List[int], sampling: SamplingParams, max_tokens: Optional[int],
                  stop: Sequence[str], ignore_eos: bool, result: _Result,
                  n_logprobs: int = 0) -> Iterator[_Step]:
        """The one generation loop: prompt (with cache reuse), then sample until a stop."""
        ctx = self.ctx
        vocab = self._model.vocab
        result.n_prompt = len(prompt_tokens)
        result.n_cached = self._eval_prompt(prompt_tokens)
        if ignore_eos:
            bias = dict(sampling.logit_bias)
            bias.update({t: float("-inf") for t in vocab.eog_tokens()})
            sampling = sampling.replace(logit_bias=tuple(bias.items()))
        sampler = _core.Sampler(self._model, sampling)
        detok = IncrementalDetokenizer(lambda t: vocab.token_to_piece(t, special=False))
        stops = StopMatcher(stop)
        n_ctx = ctx.n_ctx
        limit = max_tokens if max_tokens is not None and max_tokens >= 0 else n_ctx
        try:
            n = 0
            while True:
                if n >= limit:
                    result.finish_reason = "length"
                    break
                if len(self._cached) >= n_ctx:
                    result.finish_reason = "length"
                    break
                tok = sampler.sample(ctx, -1)
                lp = top = None
                if n_logprobs > 0 or n_logprobs == -1:
                    lp = ctx.logprob_of(-1, tok)
                    if n_logprobs > 0:
                        top = ctx.top_logprobs(-1, n_logprobs)
                n += 1
                result.tokens.append(tok)
                if not ignore_eos and vocab.is_eog(tok):
                    tail = stops.push(detok.flush())[0] + stops.flush()
                    if tail:
                        yield _Step(-1, tail)
                    result.finish_reason = "stop"
                    break
                text, matched = stops.push(detok.push(tok))
                yield _Step(tok, text, lp, top)
                if matched is not None:
                    result.finish_reason = "stop"
                    break
                self._decode_one(tok)
            if result.finish_reason == "length":
                tail = stops.push(detok.flush())[0] + stops.flush()
                if tail:
                    yield _Step(-1, tail)
        finally:
            sampler.close()

    # ------------------------------------------------------------------ completions
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
        cid = _now_id("cmpl")
        created = int(time.time())
        result = _Result()
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
        for step in self._generate(tokens, sampling, max_tokens, stops, ignore_eos, result, n_lp):
            lp = None
            if logprobs is not None and step.token >= 0:
                piece = vocab.token_to_piece(step.token, special=False).decode("utf-8", "replace")
                lp = {"tokens": [piece], "text_offset": [offset], "token_logprobs": [step.logprob],
                      "top_logprobs": [{vocab.token_to_piece(t, special=False).decode("utf-8", "replace"): l
                                        for t, l in (step.top or [])}] if logprobs else [None]}
            offset += len(step.text)
            if step.text or lp is not None:
                yield chunk(step.text, None, lp)
        usage = {"prompt_tokens": result.n_prompt, "completion_tokens": len(result.tokens),
                 "total_tokens": result.n_prompt + len(result.tokens),
                 "prompt_tokens_details": {"cached_tokens": result.n_cached}}
        yield chunk("", result.finish_reason, None, usage)

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
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """An OpenAI-shaped chat completion (tools, response_format, streaming)."""
        json_schema = None
        if response_format:
            rtype = response_format.get("type")
            if rtype == "json_object":
                json_schema = response_format.get("schema") or {"type": "object"}
            elif rtype == "json_schema":
                js = response_format.get("json_schema") or {}
                json_schema = js.get("schema", js) if isinstance(js, dict) else None
                if json_schema is None:
                    raise ValueError("response_format.json_schema.schema is required")
            elif rtype not in (None, "text"):
                raise ValueError(f"unsupported response_format type {rtype!r}")
        if json_schema is not None and grammar:
            raise ValueError("use either grammar or response_format, not both")
        rendered = self.apply_chat_template(
            messages, tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls,
            json_schema=json_schema, grammar=grammar, chat_template_kwargs=chat_template_kwargs,
            reasoning_format=reasoning_format)
        extra: Dict[str, Any] = {}
        g = rendered.get("grammar") or None
        if g:
            extra["grammar_lazy"] = bool(rendered.get("grammar_lazy"))
            pats, toks = [], []
            for t in rendered.get("grammar_triggers", []):
                kind = t.get("type_name") or ""
                if kind == "token":
                    toks.append(int(t["token"]))
                elif kind == "word":
                    import re
                    pats.append(re.escape(t["value"]))
                elif kind == "pattern_full":
                    v = t["value"]
                    pats.append(("" if v.startswith("^") else "^") + v + ("" if v.endswith("$") else "$"))
                else:
                    pats.append(t["value"])
            extra["grammar_trigger_patterns"] = tuple(pats)
            extra["grammar_trigger_tokens"] = tuple(toks)
            if rendered.get("grammar_prefill") and not extra["grammar_lazy"]:
                extra["grammar_prefill"] = tuple(self._generation_prompt_tokens(rendered.get("generation_prompt", "")))
        sampling = self._sampling(temperature, top_p, min_p, typical_p, top_k, frequency_penalty,
                                  presence_penalty, repeat_penalty, mirostat_mode, mirostat_tau,
                                  mirostat_eta, seed, g, logit_bias, **extra)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        stops += [s for s in rendered.get("additional_stops", []) if s not in stops]
        tokens = self._prompt_tokens(rendered["prompt"], add_special=True, parse_special=True)
        it = self._chat_chunks(tokens, rendered, sampling, max_tokens, stops, model or self.model_path,
                               ignore_eos, top_logprobs if logprobs else None)
        if stream:
            return it
        return self._collect_chat(it)

    def _generation_prompt_tokens(self, text: str) -> List[int]:
        """Tokens of the template's generation prompt, which a chat grammar starts with."""
        if not text:
            return []
        vocab = self._model.vocab
        toks = vocab.tokenize(text, add_special=False, parse_special=True)
        if toks and not text[0].isspace():
            first = vocab.token_to_piece(toks[0], special=True)
            if first[:1].isspace():
                toks = toks[1:]
        return toks

    def _chat_chunks(self, tokens: List[int], rendered: Dict[str, Any], sampling: SamplingParams,
                     max_tokens: Optional[int], stops: List[str], model: str, ignore_eos: bool,
                     top_logprobs: Optional[int]) -> Iterator[Dict[str, Any]]:
        cid = _now_id("chatcmpl")
        created = int(time.time())
        result = _Result()
        syntax = rendered.get("syntax")
        vocab = self._model.vocab
        text_so_far: List[str] = []
        sent: Dict[str, Any] = {"content": "", "reasoning_content": "", "n_calls": 0, "args": []}

        def chunk(delta: Dict[str, Any], finish: Optional[str] = None, lp: Any = None) -> Dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": None})
        n_lp = (top_logprobs or -1) if top_logprobs is not None else 0
        for step in self._generate(tokens, sampling, max_tokens, stops, ignore_eos, result, n_lp):
            text_so_far.append(step.text)
            lp = None
            if top_logprobs is not None and step.token >= 0:
                piece = vocab.token_to_piece(step.token, special=False)
                lp = {"content": [{"token": piece.decode("utf-8", "replace"), "logprob": step.logprob,
                                   "bytes": list(piece),
                                   "top_logprobs": [{"token": vocab.token_to_piece(t, special=False).decode(
                                       "utf-8", "replace"), "logprob": l,
                                       "bytes": list(vocab.token_to_piece(t, special=False))}
                                       for t, l in (step.top or [])]}]}
            for delta in self._diff(sent, "".join(text_so_far), syntax, partial=True):
                yield chunk(delta, None, lp)
                lp = None
            if lp is not None:
                yield chunk({}, None, lp)
        final = list(self._diff(sent, "".join(text_so_far), syntax, partial=False))
        for delta in final:
            yield chunk(delta)
        finish = result.finish_reason
        if sent["n_calls"] and finish == "stop":
            finish = "tool_calls"
        last = chunk({}, finish)
        last["usage"] = {"prompt_tokens": result.n_prompt, "completion_tokens": len(result.tokens),
                         "total_tokens": result.n_prompt + len(result.tokens),
                         "prompt_tokens_details": {"cached_tokens": result.n_cached}}
        yield last

    @staticmethod
    def _diff(sent: Dict[str, Any], text: str, syntax: Any, partial: bool) -> Iterator[Dict[str, Any]]:
        """Parse the text so far and yield OpenAI deltas for what was not sent yet."""
        if syntax is None:
            msg = {"content": text, "reasoning_content": "", "tool_calls": []}
        else:
            try:
                msg = _core.chat_parse(text, syntax, is_partial=partial)
            except ChatTemplateError:
                if partial:
                    return
                msg = {"content": text, "reasoning_content": "", "tool_calls": []}
        for key in ("reasoning_content", "content"):
            new = msg.get(key) or ""
            old = sent[key]
            if new.startswith(old) and len(new) > len(old):
                yield {key: new[len(old):]}
                sent[key] = new
        calls = msg.get("tool_calls") or []
        for i, call in enumerate(calls):
            args = call.get("arguments") or ""
            if i >= sent["n_calls"]:
                if not call.get("name"):
                    break
                sent["n_calls"] = i + 1
                sent["args"].append("")
                yield {"tool_calls": [{"index": i, "id": call.get("id") or _now_id("call"),
                                       "type": "function",
                                       "function": {"name": call["name"], "arguments": ""}}]}
            old = sent["args"][i]
            if args.startswith(old) and len(args) > len(old):
                yield {"tool_calls": [{"index": i, "function": {"arguments": args[len(old):]}}]}
                sent["args"][i] = args

    @staticmethod
    def _collect_chat(chunks: Iterator[Dict[str, Any]]) -> Dict[str, Any]:
        content: List[str] = []
        reasoning: List[str] = []
        calls: List[Dict[str, Any]] = []
        lp_content: List[Any] = []
        last: Dict[str, Any] = {}
        for c in chunks:
            last = c
            ch = c["choices"][0]
            d = ch["delta"]
            if d.get("content"):
                content.append(d["content"])
            if d.get("reasoning_content"):
                reasoning.append(d["reasoning_content"])
            for tc in d.get("tool_calls") or []:
                i = tc["index"]
                if i >= len(calls):
                    calls.append({"id": tc["id"], "type": "function",
                                  "function": {"name": tc["function"]["name"], "arguments": ""}})
                calls[i]["function"]["arguments"] += tc["function"].get("arguments", "")
            if ch.get("logprobs"):
                lp_content.extend(ch["logprobs"]["content"])
        message: Dict[str, Any] = {"role": "assistant", "content": "".join(content) if (content or not calls) else None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        return {"id": last["id"], "object": "chat.completion", "created": last["created"], "model": last["model"],
                "choices": [{"index": 0, "message": message,
                             "logprobs": {"content": lp_content} if lp_content else None,
                             "finish_reason": last["choices"][0]["finish_reason"]}],
                "usage": last.get("usage")}

    # ------------------------------------------------------------------ embeddings
    def embed(self, input: Union[str, List[str]], normalize: bool = False, truncate: bool = True,
              return_count: bool = False) -> Any:
        """Embeddings of one text or a list (pooled per the model, or per token with pooling none)."""
        ctx = self.ctx
        if not self.context_params.embeddings:
            raise ValueError("create the Llama with embedding=True to compute embeddings")
        single = isinstance(input, str)
        texts = [input] if single else list(input)
        n_batch = self._batch.capacity
        pooled = ctx.pooling_type != 0
        out: List[Any] = []
        total = 0
        for text in texts:
            toks = self.tokenize(text, add_bos=True, special=False)
            if len(toks) > n_batch:
                if not truncate:
                    raise ContextLimitError(f"input has {len(toks)} tokens, more than n_batch={n_batch}",
                                            n_tokens=len(toks), n_ctx=n_batch)
                toks = toks[:n_batch]
            total += len(toks)
            ctx.seq_rm(0)
            self._cached = []
            b = self._batch
            b.clear()
            for i, t in enumerate(toks):
                b.add(t, i, 0, True)
            if self._model.has_encoder and not self._model.has_decoder:
                ctx.encode(b)
            else:
                ctx.decode(b)
            if pooled:
                e = ctx.embeddings_seq(0)
                if normalize:
                    e = e / max(float(np.linalg.norm(e)), 1e-12)
                out.append(e.tolist())
            else:
                rows = [ctx.embeddings(i) for i in range(len(toks))]
                if normalize:
                    rows = [r / max(float(np.linalg.norm(r)), 1e-12) for r in rows]
                out.append([r.tolist() for r in rows])
            ctx.seq_rm(0)
        res = out[0] if single else out
        return (res, total) if return_count else res

    def create_embedding(self, input: Union[str, List[str]], model: Optional[str] = None) -> Dict[str, Any]:
        data, count = self.embed(input, return_count=True)
        items = [data] if isinstance(input, str) else data
        return {"object": "list", "model": model or self.model_path,
                "data": [{"object": "embedding", "embedding": e, "index": i} for i, e in enumerate(items)],
                "usage": {"prompt_tokens": count, "total_tokens": count}}


__all__ = ["Llama"]
