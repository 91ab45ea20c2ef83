"""Threads with a deep stack, for the work that recurses in llama.cpp.

llama.cpp's grammar parser and its grammar stacks recurse once per nested group and per rule of
a chain, and its JSON-schema converter runs a recursive std::regex over every name: a default
8 MiB thread stack overflows (SIGSEGV, the whole process) at about 10,000 nested parentheses or
60,000 chained rules. The front end's workers and the engine thread, the only threads that run
that work, get ``DEEP_STACK`` bytes instead (address space only: pages are used as touched), which
holds every grammar within the front end's size limits with room to spare.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

DEEP_STACK = 256 * 1024 * 1024
_lock = threading.Lock()


@contextlib.contextmanager
def deep_stacks(size: int = DEEP_STACK) -> Iterator[None]:
    """Threads started inside get ``size`` bytes of stack (the setting is process-wide, so it is
    held under a lock and put back at once)."""
    with _lock:
        old = threading.stack_size(size)
        try:
            yield
        finally:
            threading.stack_size(old)


def start_thread(target: Callable[[], Any], name: str, daemon: bool = True) -> threading.Thread:
    """Start ``target`` on a new thread with a deep stack."""
    t = threading.Thread(target=target, name=name, daemon=daemon)
    with deep_stacks():
        t.start()
    return t
