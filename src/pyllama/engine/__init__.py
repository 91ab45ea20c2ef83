"""The engine: slots and continuous batching over one llama context."""
from .async_engine import AsyncEngine, EngineParams, EngineStoppedError, RequestStream, fold
from .core import EngineCore, EngineMetrics, Runner, SlotErased, SlotRestored, SlotSaved
from .request import FINISH_REASON, Request, RequestKind, RequestOutput, RequestState, RequestStatus, TokenLogprob
from .runner import LlamaRunner, normalize_embedding
from .scheduler import (BatchItem, MemOp, Scheduler, SchedulerConfig, SchedulerOutput, SeqLoad, SeqRm, SeqSave,
                        SeqShift)

__all__ = ["AsyncEngine", "EngineParams", "EngineStoppedError", "RequestStream", "fold", "EngineCore", "EngineMetrics", "Runner",
           "SlotErased", "SlotRestored", "SlotSaved", "FINISH_REASON", "Request",
           "RequestKind", "RequestOutput", "RequestState", "RequestStatus", "TokenLogprob", "LlamaRunner",
           "normalize_embedding", "BatchItem", "MemOp", "Scheduler", "SchedulerConfig", "SchedulerOutput",
           "SeqLoad", "SeqRm", "SeqSave", "SeqShift"]
