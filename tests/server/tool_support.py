"""What the tool-calling and API-conversion tests share: tools and their schemas, template models'
settings, and a scripted engine output (a test double for the model only)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from pyllama.engine import RequestOutput

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models" / "templates"
QWEN25 = "Qwen-Qwen2.5-7B-Instruct.jinja"          # the template of tests/conftest.py's chat model

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Berlin"]}},
                  "required": ["city"], "additionalProperties": False}
TIME_SCHEMA = {"type": "object", "properties": {"tz": {"type": "string", "enum": ["UTC", "CET"]},
                                                "24h": {"type": "boolean"}},
               "required": ["tz", "24h"], "additionalProperties": False}
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather",
                                                 "description": "Get the current weather in a city",
                                                 "parameters": WEATHER_SCHEMA}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Get the time in a time zone",
                                              "parameters": TIME_SCHEMA}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "get_time": TIME_SCHEMA}
ARGV = ("-np", "1", "-c", "1024")

LLAMA31 = ("llama-bpe", "meta-llama-Llama-3.1-8B-Instruct.jinja")
# Llama 3.1's system prompt has today's date: pinned, so the greedy outputs do not change from day to day
PIN_DATE = {"chat_template_kwargs": {"date_string": "26 Jul 2024"}}
# the grammar bounds a call (enums, booleans, at most ~22 characters of whitespace between tokens);
# it takes ~50-80 tokens with random weights
FORCED_MAX_TOKENS = 400


def argv_for(path: Path, *more: str) -> List[str]:
    return ["-m", str(path), *ARGV, *more]


def token_pieces(vocab, text: str) -> List[Tuple[int, str]]:
    """``text`` as the model would emit it: (token, new text) per token (UTF-8 split across tokens kept whole)."""
    toks = vocab.tokenize(text, add_special=False, parse_special=True)
    out: List[Tuple[int, str]] = []
    buf, sent = b"", ""
    for t in toks:
        buf += vocab.token_to_piece(t, special=True)
        s = buf.decode("utf-8", "ignore")
        out.append((t, s[len(sent):]))
        sent = s
    if sent == " " + text:                    # SentencePiece's space prefix
        k = next(i for i, (_, p) in enumerate(out) if p)
        out[k] = (out[k][0], out[k][1][1:])
        sent = sent[1:]
    assert sent == text, (sent, text)
    return out


def scripted_output(st, text: str, finish_reason: str = "stop") -> None:
    """Make the app's engine emit ``text`` token by token instead of sampling (a test double for the
    model only: validation, rendering, parsing and the responses stay the server's own)."""
    pieces = token_pieces(st.vocab, text)

    async def outputs(request):
        n = len(pieces)
        for i, (tok, piece) in enumerate(pieces):
            last = i == n - 1
            usage = {"prompt_tokens": len(request.prompt), "completion_tokens": n,
                     "total_tokens": len(request.prompt) + n, "prompt_tokens_details": {"cached_tokens": 0}}
            yield RequestOutput(request.id, text=piece, token_ids=[tok], finished=last,
                                finish_reason=finish_reason if last else None,
                                usage=usage if last else None, timings={} if last else None)

    class Stream:                       # the interface of AsyncEngine.generate()'s RequestStream
        def __init__(self, request):
            self.request_id = request.id
            self._it = outputs(request)

        def __aiter__(self):
            return self

        def __anext__(self):
            return self._it.__anext__()

        def close(self):
            pass

    st.engine.generate = Stream         # AsyncEngine.complete()/embed() and the server go through it
