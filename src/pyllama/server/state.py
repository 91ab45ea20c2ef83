"""What the app holds while it runs: the config, the front end (model bundle), the engine."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from aiohttp import web

from ..engine import AsyncEngine
from ..frontend import Frontend, Workers
from .config import ServerConfig
from .errors import APIError


@dataclass
class ServerState:
    config: ServerConfig
    workers: Workers
    frontend: Optional[Frontend] = None
    engine: Optional[AsyncEngine] = None
    ready: bool = False
    load_error: Optional[str] = None
    load_progress: float = 0.0
    t_start: float = field(default_factory=time.time)
    live_chats: Dict[str, List[str]] = field(default_factory=dict)   # running chat completion id -> request ids

    def require(self) -> "ServerState":
        """The state, if the model is ready; else a 503 as llama-server's."""
        if self.load_error:
            raise APIError(503, f"Model failed to load: {self.load_error}")
        if not self.ready or self.engine is None or not self.engine.running:
            raise APIError(503, "Loading model")
        return self

    @property
    def fe(self) -> Frontend:
        assert self.frontend is not None
        return self.frontend

    @property
    def vocab(self):
        return self.fe.vocab


CONFIG = web.AppKey("config", ServerConfig)
STATE = web.AppKey("state", ServerState)
UI_FILES = web.AppKey("ui_files", frozenset)    # paths of the web UI's files (no API key needed)
