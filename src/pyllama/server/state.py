"""What the app holds while it runs: config, model, engine, templates, adapters."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from aiohttp import web

from .. import _core
from ..engine import AsyncEngine
from .config import ServerConfig
from .errors import APIError


@dataclass
class LoraEntry:
    adapter: "_core.LoraAdapter"
    path: str
    scale: float


@dataclass
class ServerState:
    config: ServerConfig
    model: Optional["_core.Model"] = None
    engine: Optional[AsyncEngine] = None
    templates: Optional["_core.ChatTemplates"] = None
    loras: List[LoraEntry] = field(default_factory=list)
    ready: bool = False
    load_error: Optional[str] = None
    load_progress: float = 0.0
    t_start: float = field(default_factory=time.time)
    live_chats: Dict[str, List[str]] = field(default_factory=dict)   # running chat completion id -> request ids
    _lora_scales: Tuple[float, ...] = ()

    def require(self) -> "ServerState":
        """The state, if the model is ready; else a 503 as llama-server's."""
        if self.load_error:
            raise APIError(503, f"Model failed to load: {self.load_error}")
        if not self.ready or self.engine is None or not self.engine.running:
            raise APIError(503, "Loading model")
        return self

    def lora_scales(self) -> Tuple[float, ...]:
        """The global adapter scales (--lora/--lora-scaled, POST /lora-adapters), by adapter id.
        The same tuple object until they change, so requests using them batch at no cost."""
        scales = tuple(e.scale for e in self.loras)
        if scales != self._lora_scales:
            self._lora_scales = scales
        return self._lora_scales

    @property
    def vocab(self) -> "_core.Vocab":
        assert self.model is not None
        return self.model.vocab


CONFIG = web.AppKey("config", ServerConfig)
STATE = web.AppKey("state", ServerState)
