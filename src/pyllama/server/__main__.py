"""python -m pyllama.server -m model.gguf [llama-server flags]"""
from __future__ import annotations

import json
import logging
import ssl
import sys
from dataclasses import replace
from typing import Optional, Sequence

from .config import ConfigError, ServerConfig, parse_args


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
             "msg": record.getMessage()}
        for key in ("http", "summary", "req"):
            if hasattr(record, key):
                d[key] = getattr(record, key)
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        s = super().format(record)
        for key in ("http", "summary", "req"):
            if hasattr(record, key):
                s += " " + " ".join(f"{k}={v}" for k, v in getattr(record, key).items())
        return s


def setup_logging(cfg: ServerConfig) -> None:
    log = cfg.log
    handler: logging.Handler = logging.FileHandler(log.file) if log.file else logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log.format == "json"
                         else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if log.verbose else logging.INFO)
    logging.getLogger("pyllama.llama_cpp").setLevel(logging.DEBUG if log.verbose else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        cfg = parse_args(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg)
    from .app import create_app
    from .serve import serve
    from .state import STATE
    http = cfg.http
    ssl_ctx = None
    if http.ssl_cert_file:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(http.ssl_cert_file, http.ssl_key_file)
    app = create_app(replace(cfg, exit_on_load_error=True))     # the command line server exits on a load error

    def exit_code(rc: int) -> int:
        if app[STATE].load_error:
            print(f"error: failed to load the model: {app[STATE].load_error}", file=sys.stderr, flush=True)
            return 1
        return rc

    # --timeout bounds how long an idle keep-alive connection is held and how long a body may take
    # (llama-server's read/write timeout); serve() adds the connection cap and the header timeout
    return serve(app, http, ssl_ctx, exit_code)


if __name__ == "__main__":
    sys.exit(main())
