"""The aiohttp application: create_app(config) -> web.Application.

The model loads in the background after the server starts listening (``/health`` answers 503
"Loading model" until then); the engine lives in the app's cleanup context and is stopped, with
its in-flight requests drained, on shutdown.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import AsyncIterator, Optional

from aiohttp import web

from .. import _core
from ..engine import AsyncEngine
from ..errors import ChatTemplateError
from ..params import ContextParams, ModelParams
from . import middlewares as mw
from . import native, openai
from .config import ServerConfig
from .schemas import openapi_document
from .state import CONFIG, STATE, LoraEntry, ServerState

logger = logging.getLogger("pyllama.server")
STATIC_DIR = Path(__file__).parent / "static"
LOADER = web.AppKey("loader", asyncio.Task)


def routes(cfg: ServerConfig) -> list:
    """The one endpoint table: (method, path, handler)."""
    from . import anthropic, extra, responses
    table = [
        ("GET", "/health", native.health), ("GET", "/v1/health", native.health),
        ("GET", "/v1/models", openai.models), ("GET", "/models", openai.models),
        ("POST", "/v1/completions", openai.completions), ("POST", "/completions", native.completion),
        ("POST", "/completion", native.completion),
        ("POST", "/v1/chat/completions", openai.chat_completions), ("POST", "/chat/completions", openai.chat_completions),
        ("POST", "/v1/chat/completions/control", openai.chat_control),
        ("POST", "/v1/chat/completions/input_tokens", openai.chat_input_tokens),
        ("POST", "/chat/completions/input_tokens", openai.chat_input_tokens),
        ("POST", "/v1/responses", responses.responses), ("POST", "/responses", responses.responses),
        ("POST", "/v1/responses/input_tokens", responses.input_tokens),
        ("POST", "/responses/input_tokens", responses.input_tokens),
        ("POST", "/v1/messages", anthropic.messages),
        ("POST", "/v1/messages/count_tokens", anthropic.count_tokens),
        ("POST", "/v1/embeddings", openai.embeddings),
        ("POST", "/embedding", native.embedding_native), ("POST", "/embeddings", native.embedding_native),
        ("POST", "/tokenize", native.tokenize), ("POST", "/detokenize", native.detokenize),
        ("POST", "/apply-template", native.apply_template),
        ("GET", "/props", native.props), ("POST", "/props", native.props_post),
        ("GET", "/slots", native.slots), ("POST", "/slots/{id_slot}", native.slot_action),
        ("GET", "/metrics", native.metrics),
        ("POST", "/infill", extra.infill),
        ("POST", "/reranking", extra.rerank), ("POST", "/rerank", extra.rerank), ("POST", "/v1/rerank", extra.rerank),
        ("GET", "/lora-adapters", extra.lora_get), ("POST", "/lora-adapters", extra.lora_post),
        ("GET", "/openapi.json", openapi_json),
    ]
    return table


async def openapi_json(request: web.Request) -> web.Response:
    from .. import __version__
    return web.json_response(openapi_document("pyllama server", __version__))


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _file_handler(path: Path, headers: Optional[dict] = None):
    """A GET handler for one file (aiohttp wants coroutine handlers)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers=headers)
    return handler


def _model_params(cfg: ServerConfig) -> ModelParams:
    return ModelParams(n_gpu_layers=cfg.n_gpu_layers, split_mode=cfg.split_mode, main_gpu=cfg.main_gpu,
                       tensor_split=tuple(cfg.tensor_split) if cfg.tensor_split else None, use_mmap=cfg.mmap,
                       use_mlock=cfg.mlock, check_tensors=cfg.check_tensors, kv_overrides=cfg.kv_overrides or None,
                       rpc_servers=tuple(cfg.rpc.split(",")) if cfg.rpc else None)


def _context_params(cfg: ServerConfig) -> ContextParams:
    kw: dict = {}
    if cfg.threads > 0:
        kw["n_threads"] = cfg.threads
    if cfg.threads_batch > 0:
        kw["n_threads_batch"] = cfg.threads_batch
    pooling = "rank" if cfg.reranking else (cfg.pooling or "unspecified")
    return ContextParams(n_ctx=cfg.ctx_size, n_batch=cfg.batch_size, n_ubatch=min(cfg.ubatch_size, cfg.batch_size),
                         flash_attn=cfg.flash_attn, type_k=cfg.cache_type_k, type_v=cfg.cache_type_v,
                         embeddings=cfg.embedding or cfg.reranking, pooling_type=pooling,
                         rope_freq_base=cfg.rope_freq_base, rope_freq_scale=cfg.rope_freq_scale, **kw)


class _ProgressBar:
    """A load progress bar on a terminal (stderr); silent otherwise."""

    def __init__(self, st: ServerState):
        self.st = st
        self.tty = sys.stderr.isatty()
        self.last = -1

    def __call__(self, p: float) -> bool:
        self.st.load_progress = p
        if self.tty:
            pct = int(p * 100)
            if pct != self.last:
                self.last = pct
                bar = "#" * (pct // 4)
                sys.stderr.write(f"\rloading model [{bar:<25}] {pct:3d}%")
                if pct >= 100:
                    sys.stderr.write("\n")
                sys.stderr.flush()
        return True


def load_blocking(st: ServerState) -> None:
    """Load the model, the templates and the adapters (in a worker thread)."""
    cfg = st.config
    model = _core.Model(cfg.model, _model_params(cfg), progress_callback=_ProgressBar(st))
    override = cfg.chat_template or ""
    if not cfg.jinja and not override:
        override = "chatml"
    try:
        templates = _core.ChatTemplates(model, override)
    except ChatTemplateError:
        if override:
            raise
        logger.warning("the model has no usable chat template: using chatml")
        templates = _core.ChatTemplates(model, "chatml")
    st.model, st.templates = model, templates
    for path, scale in cfg.lora:
        st.loras.append(LoraEntry(_core.LoraAdapter(model, path), path, 0.0 if cfg.lora_init_without_apply else scale))


async def _load(app: web.Application, engine: Optional[AsyncEngine]) -> None:
    st = app[STATE]
    cfg = st.config
    loop = asyncio.get_running_loop()
    try:
        if engine is None:
            await loop.run_in_executor(None, load_blocking, st)
            if cfg.cache_ram != 0:
                logger.info("prompt cache is enabled, size limit: %s",
                            "no limit" if cfg.cache_ram < 0 else f"{cfg.cache_ram} MiB")
            elif cfg.cache_idle_slots:
                logger.warning("--cache-idle-slots requires --cache-ram, disabling")
            engine = AsyncEngine(st.model, _context_params(cfg), n_parallel=cfg.n_slots, kv_unified=cfg.unified,
                                 context_shift=cfg.context_shift, n_keep=cfg.keep,
                                 slot_prompt_similarity=cfg.slot_prompt_similarity,
                                 cont_batching=cfg.cont_batching, cache_ram_mib=cfg.cache_ram,
                                 cache_idle_slots=cfg.cache_idle_slots)
            await loop.run_in_executor(None, engine.start, loop)
        else:
            st.model = engine.model
            if st.templates is None:
                try:
                    st.templates = _core.ChatTemplates(engine.model, cfg.chat_template or "")
                except ChatTemplateError:
                    st.templates = _core.ChatTemplates(engine.model, "chatml")
            if not engine.running:
                engine.start(loop)
        st.engine = engine
        if st.loras:
            adapters, scales = [e.adapter for e in st.loras], st.lora_scales()
            await engine.call(lambda core: core.runner.set_loras(adapters, scales))
        st.ready = True
        m = st.model
        runner = engine.core.runner
        if cfg.cache_reuse > 0 and not getattr(runner, "can_shift", True):
            logger.warning("cache_reuse is not supported by this context, it will be disabled")
        devices = ", ".join(f"{d['name']} ({d['description']})" for d in _core.list_devices(memory=False))
        logger.info("model loaded", extra={"summary": {
            "model": cfg.model, "alias": cfg.model_name, "params": m.n_params, "ctx": runner.n_ctx_slot,
            "slots": cfg.n_slots, "kv_unified": cfg.unified, "backends": _core.list_backends(), "devices": devices}})
        print(f"pyllama: {os.path.basename(cfg.model or '')}: {m.n_params / 1e6:.1f}M params, {m.ftype}, "
              f"n_ctx {runner.n_ctx_slot}{' per slot' if not cfg.unified else ''}, {cfg.n_slots} slots"
              f"{' (unified KV)' if cfg.unified else ''}, backends {'+'.join(_core.list_backends())}, "
              f"devices: {devices}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 - reported by /health
        logger.exception("failed to load the model")
        st.load_error = f"{type(e).__name__}: {e}"
        if cfg.exit_on_load_error:   # the command line server exits, as llama-server does
            import signal
            signal.raise_signal(signal.SIGTERM)


def create_app(config: ServerConfig, engine: Optional[AsyncEngine] = None) -> web.Application:
    """The app. With ``engine`` (started or not) it serves that engine's model instead of loading one."""
    app = web.Application(client_max_size=config.max_body_bytes,
                          middlewares=[mw.log_middleware, mw.cors_middleware, mw.error_middleware,
                                       mw.auth_middleware])
    app[CONFIG] = config
    app[STATE] = ServerState(config)
    app.on_response_prepare.append(mw.add_cors_headers)
    prefix = config.api_prefix
    for method, path, handler in routes(config):
        app.router.add_route(method, prefix + path, handler)
    if config.static_path:
        app.router.add_get(prefix + "/", _file_handler(Path(config.static_path) / "index.html"))
        app.router.add_static(prefix + "/", config.static_path, show_index=False)
    elif config.ui and (STATIC_DIR / "index.html").exists():
        app.router.add_get(prefix + "/", index)
        if prefix:
            async def to_slash(request: web.Request) -> web.StreamResponse:
                raise web.HTTPFound(prefix + "/")
            app.router.add_get(prefix, to_slash)
        for f in STATIC_DIR.iterdir():
            if f.is_file() and f.name != "index.html":
                app.router.add_get(prefix + "/" + f.name, _file_handler(f, {"Cache-Control": "no-cache"}))

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_load(app, engine))
        app[LOADER] = task
        yield
        st = app[STATE]
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if st.engine is not None:
            await st.engine.stop(drain=True, timeout=30)
        if engine is None and st.model is not None:
            if st.templates is not None:
                st.templates.close()
            st.model.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def wait_ready(app: web.Application, timeout: float = 300.0) -> None:
    """For tests and embedding: wait until the model is loaded (raises on a load error)."""
    await asyncio.wait_for(asyncio.shield(app[LOADER]), timeout)
    st = app[STATE]
    if st.load_error:
        raise RuntimeError(st.load_error)
