"""Prometheus text for GET /metrics, with llama-server's metric names."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

_METRICS: List[Tuple[str, str, str, Any]] = [
    ("counter", "prompt_tokens_total", "Number of prompt tokens processed.", "n_prompt_tokens_processed_total"),
    ("counter", "prompt_seconds_total", "Prompt process time", lambda m: m["t_prompt_processing_total"] / 1e3),
    ("counter", "tokens_predicted_total", "Number of generation tokens processed.", "n_tokens_predicted_total"),
    ("counter", "tokens_predicted_seconds_total", "Predict process time",
     lambda m: m["t_tokens_generation_total"] / 1e3),
    ("counter", "n_decode_total", "Total number of llama_decode() calls", "n_decode_total"),
    ("counter", "n_tokens_max", "Largest observed n_tokens.", "n_tokens_max"),
    ("gauge", "n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
     "n_busy_slots_per_decode"),
    ("gauge", "prompt_tokens_seconds", "Average prompt throughput in tokens/s.",
     lambda m: 1e3 * m["n_prompt_tokens_processed_total"] / m["t_prompt_processing_total"]
     if m["t_prompt_processing_total"] else 0.0),
    ("gauge", "predicted_tokens_seconds", "Average generation throughput in tokens/s.",
     lambda m: 1e3 * m["n_tokens_predicted_total"] / m["t_tokens_generation_total"]
     if m["t_tokens_generation_total"] else 0.0),
    ("gauge", "requests_processing", "Number of requests processing.", "requests_processing"),
    ("gauge", "requests_deferred", "Number of requests deferred.", "requests_deferred"),
    # pyllama's own (llama-server has no bound to count against)
    ("counter", "requests_rejected_total", "Requests refused with 503 because the admission queue was full.",
     "requests_rejected_total"),
    ("counter", "http_connections_rejected_total", "Connections refused with 503 past --max-connections.",
     "http_connections_rejected_total"),
    ("gauge", "http_connections_open", "Open HTTP connections.", "http_connections_open"),
]


def render(m: Dict[str, Any], prefix: str = "llamacpp:") -> str:
    lines = []
    for kind, name, help_, src in _METRICS:
        value = src(m) if callable(src) else m.get(src, 0)
        full = prefix + name
        lines.append(f"# HELP {full} {help_}")
        lines.append(f"# TYPE {full} {kind}")
        lines.append(f"{full} {float(value):.6g}" if isinstance(value, float) else f"{full} {value}")
    return "\n".join(lines) + "\n"
