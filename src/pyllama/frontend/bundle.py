"""Loading a model bundle: the model (with its devices, RPC workers included, resolved here
once), its chat templates and its LoRA adapters. ``_core`` gets plain parameters."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .. import _core
from ..errors import ChatTemplateError
from ..params import ModelParams
from ..rpc import model_devices

logger = logging.getLogger("pyllama.frontend")


def load_model(path: str, params: Optional[ModelParams] = None,
               progress_callback: Optional[Callable[[float], Any]] = None) -> "_core.Model":
    """A ``_core.Model`` on the devices ``params`` asks for: with ``rpc_servers``, the workers
    are reached and registered first and their devices lead (see pyllama.rpc.model_devices)."""
    params = params or ModelParams()
    devices = model_devices(params.devices, params.rpc_servers)
    return _core.Model(path, replace(params, devices=devices, rpc_servers=None),
                       progress_callback=progress_callback)


def load_templates(model: "_core.Model", override: Optional[str] = None, jinja: bool = True) -> "_core.ChatTemplates":
    """The chat templates: ``override`` (a built-in name or Jinja text) or the model's own;
    chatml when the model has none or its own cannot be used (with a warning), or when Jinja is
    off and nothing was named (llama-server's --no-jinja)."""
    override = override or ""
    if not override and (not jinja or model.chat_template() is None):
        override = "chatml"
    try:
        return _core.ChatTemplates(model, override)
    except ChatTemplateError:
        if override:
            raise
        logger.warning("the model has no usable chat template: using chatml")
        return _core.ChatTemplates(model, "chatml")


@dataclass
class LoraSlot:
    """A loaded LoRA adapter, its file and its global scale (what requests without a ``lora``
    field use; POST /lora-adapters changes it)."""

    adapter: "_core.LoraAdapter"
    path: str
    scale: float


class ModelBundle:
    """A model and what is loaded with it. Owns them: ``close()`` frees all (unless the model
    was lent, see ``of_model``)."""

    def __init__(self, model: "_core.Model", templates: "_core.ChatTemplates",
                 loras: Sequence[LoraSlot] = (), owns_model: bool = True):
        self.model = model
        self.templates = templates
        self.loras: List[LoraSlot] = list(loras)
        self._owns_model = owns_model

    @classmethod
    def load(cls, path: str, params: Optional[ModelParams] = None, *, chat_template: Optional[str] = None,
             jinja: bool = True, loras: Sequence[Tuple[str, float]] = (), lora_init_without_apply: bool = False,
             progress_callback: Optional[Callable[[float], Any]] = None) -> "ModelBundle":
        """Load a model file with its templates and adapters (``loras``: (path, scale) pairs; with
        ``lora_init_without_apply`` their global scales start at 0, as llama-server's flag)."""
        model = load_model(path, params, progress_callback)
        try:
            templates = load_templates(model, chat_template, jinja)
            slots = [LoraSlot(_core.LoraAdapter(model, p), p, 0.0 if lora_init_without_apply else s)
                     for p, s in loras]
        except BaseException:
            model.close()
            raise
        return cls(model, templates, slots)

    @classmethod
    def of_model(cls, model: "_core.Model", chat_template: Optional[str] = None) -> "ModelBundle":
        """A bundle around a model someone else owns (an engine given to the server)."""
        return cls(model, load_templates(model, chat_template), owns_model=False)

    @property
    def vocab(self) -> "_core.Vocab":
        return self.model.vocab

    def lora_scales(self) -> Tuple[float, ...]:
        return tuple(s.scale for s in self.loras)

    def close(self) -> None:
        """Free the templates, the adapters and (if owned) the model. Idempotent."""
        self.templates.close()
        for s in self.loras:
            s.adapter.close()
        if self._owns_model:
            self.model.close()
