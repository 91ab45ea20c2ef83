"""A slot: one llama sequence id, the tokens its KV holds, and the request it serves."""
from __future__ import annotations

from typing import List, Optional, Sequence

from .request import RequestState


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Slot:
    __slots__ = ("id", "n_ctx", "cache", "state", "last_used", "lora")

    def __init__(self, id: int, n_ctx: int):
        self.id = id                    # == the llama seq_id
        self.n_ctx = n_ctx              # positions this slot may use
        self.cache: List[int] = []      # tokens whose KV is in the sequence, in order
        self.state: Optional[RequestState] = None
        self.last_used = 0              # a logical clock: higher is more recent
        self.lora = None                # the LoRA scales ``cache`` was computed with (Request.lora)

    @property
    def free(self) -> bool:
        return self.state is None

    def info(self) -> dict:
        st = self.state
        return {
            "id": self.id,
            "n_ctx": self.n_ctx,
            "is_processing": st is not None,
            "id_task": st.id if st is not None else None,
            "state": st.status.name.lower() if st is not None else "idle",
            "n_cached": len(self.cache),
            "n_prompt_tokens": len(st.request.prompt) if st is not None else 0,
            "n_decoded": len(st.generated) if st is not None else 0,
            "lora": [{"id": i, "scale": x} for i, x in enumerate(st.request.lora)]
            if st is not None and st.request.lora is not None else None,
        }
