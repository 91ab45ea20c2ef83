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

from ..engine import AsyncEngine
from ..frontend import Frontend, Limits, ModelBundle, Workers
from . import middlewares as mw
from .config import ServerConfig
from .routes import ROUTES
from .serve import transport_middleware
from .state import CONFIG, STATE, UI_FILES, ServerState

logger = logging.getLogger("pyllama.server")
STATIC_DIR = Path(__file__).parent / "static"
LOADER = web.AppKey("loader", asyncio.Task)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def _file_handler(path: Path, headers: Optional[dict] = None):
    """A GET handler for one file (aiohttp wants coroutine handlers)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers=headers)
    return handler


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


def load_blocking(st: ServerState) -> ModelBundle:
    """Load the model, the templates and the adapters (in a worker thread)."""
    m = st.config.model
    return ModelBundle.load(m.path, m.params, chat_template=m.chat_template, jinja=m.jinja, loras=m.lora,
                            lora_init_without_apply=m.lora_init_without_apply, progress_callback=_ProgressBar(st))


def _frontend(st: ServerState, bundle: ModelBundle) -> Frontend:
    cfg = st.config     # n / n_cmpl at most the slot count, as llama-server
    return Frontend(bundle, defaults=cfg.generation, workers=st.workers, chat_defaults=cfg.chat,
                    limits=Limits(max_choices=cfg.n_slots))


async def _load(app: web.Application, engine: Optional[AsyncEngine]) -> None:
    st = app[STATE]
    cfg = st.config
    loop = asyncio.get_running_loop()
    try:
        if engine is None:
            bundle = await loop.run_in_executor(None, load_blocking, st)
            ram = cfg.engine.cache_ram_mib
            if ram != 0:
                logger.info("prompt cache is enabled, size limit: %s", "no limit" if ram < 0 else f"{ram} MiB")
            elif cfg.engine.cache_idle_slots:
                logger.warning("--cache-idle-slots requires --cache-ram, disabling")
            st.frontend = _frontend(st, bundle)
            engine = AsyncEngine(bundle.model, cfg.context, cfg.engine)
            await loop.run_in_executor(None, engine.start, loop)
        else:
            bundle = ModelBundle.of_model(engine.model, cfg.model.chat_template)
            st.frontend = _frontend(st, bundle)
            if not engine.running:
                engine.start(loop)
        st.engine = engine
        if bundle.loras:
            await engine.set_loras([s.adapter for s in bundle.loras], bundle.lora_scales())
        st.ready = True
        if cfg.generation.cache_reuse > 0 and not engine.can_shift:
            logger.warning("cache_reuse is not supported by this context, it will be disabled")
        _log_loaded(cfg, bundle, engine)
    except Exception as e:  # noqa: BLE001 - reported by /health
        logger.exception("failed to load the model")
        st.load_error = f"{type(e).__name__}: {e}"
        if cfg.exit_on_load_error:   # the command line server exits, as llama-server does
            import signal
            signal.raise_signal(signal.SIGTERM)


def _log_loaded(cfg: ServerConfig, bundle: ModelBundle, engine: AsyncEngine) -> None:
    from .. import list_backends, list_devices
    m = bundle.model
    devices = ", ".join(f"{d['name']} ({d['description']})" for d in list_devices(memory=False))
    logger.info("model loaded", extra={"summary": {
        "model": cfg.model.path, "alias": cfg.model_name, "params": m.n_params, "ctx": engine.n_ctx_slot,
        "slots": cfg.n_slots, "kv_unified": cfg.unified, "backends": list_backends(), "devices": devices}})
    print(f"pyllama: {os.path.basename(cfg.model.path or '')}: {m.n_params / 1e6:.1f}M params, {m.ftype}, "
          f"n_ctx {engine.n_ctx_slot}{' per slot' if not cfg.unified else ''}, {cfg.n_slots} slots"
          f"{' (unified KV)' if cfg.unified else ''}, backends {'+'.join(list_backends())}, "
          f"devices: {devices}", file=sys.stderr, flush=True)


def create_app(config: ServerConfig, engine: Optional[AsyncEngine] = None) -> web.Application:
    """The app. With ``engine`` (started or not) it serves that engine's model instead of loading one."""
    http = config.http
    app = web.Application(client_max_size=http.max_body_bytes,
                          middlewares=[transport_middleware, mw.log_middleware, mw.cors_middleware, mw.error_middleware,
                                       mw.auth_middleware])
    app[CONFIG] = config
    app[STATE] = ServerState(config, Workers())
    app.on_response_prepare.append(mw.add_cors_headers)
    prefix = http.api_prefix
    for method, path, handler in ROUTES:
        app.router.add_route(method, prefix + path, handler)
    ui_files = set()
    if http.static_path:
        app.router.add_get(prefix + "/", _file_handler(Path(http.static_path) / "index.html"))
        app.router.add_static(prefix + "/", http.static_path, show_index=False)
        root = Path(http.static_path)
        ui_files = {"/"} | {"/" + p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    elif http.ui and (STATIC_DIR / "index.html").exists():
        ui_files = {"/"} | {"/" + f.name for f in STATIC_DIR.iterdir() if f.is_file() and f.name != "index.html"}
        app.router.add_get(prefix + "/", index)
        if prefix:
            async def to_slash(request: web.Request) -> web.StreamResponse:
                raise web.HTTPFound(prefix + "/")
            app.router.add_get(prefix, to_slash)
        for f in STATIC_DIR.iterdir():
            if f.is_file() and f.name != "index.html":
                app.router.add_get(prefix + "/" + f.name, _file_handler(f, {"Cache-Control": "no-cache"}))

    app[UI_FILES] = frozenset(ui_files)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_load(app, engine))
        app[LOADER] = task
        yield
        st = app[STATE]
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        grace = config.http.shutdown_timeout
        if st.engine is not None:
            await st.engine.stop(drain=True, timeout=grace)
        # by now every handler has ended, so work still on the pool is for nobody; but a worker may
        # be inside a long C call on the model (a huge tokenization), and freeing the model under
        # it would crash: a model still in use is left to the process's exit
        idle = await asyncio.get_running_loop().run_in_executor(None, st.workers.close, 1.0)
        if st.frontend is not None:
            if idle:
                st.frontend.bundle.close()      # the model too, unless the engine was lent to the app
            else:
                logger.warning("a worker is still busy: exiting without freeing the model under it")

    app.cleanup_ctx.append(lifecycle)
    return app


async def wait_ready(app: web.Application, timeout: float = 300.0) -> None:
    """For tests and embedding: wait until the model is loaded (raises on a load error)."""
    await asyncio.wait_for(asyncio.shield(app[LOADER]), timeout)
    st = app[STATE]
    if st.load_error:
        raise RuntimeError(st.load_error)
