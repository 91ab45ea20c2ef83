"""Command line and environment: llama-server's flag spellings and LLAMA_ARG_* variables.

A flag wins over its environment variable. A llama-server flag that pyllama does not support
yet is refused with a clear message (never silently ignored).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple


@dataclass
class ServerConfig:
    model: Optional[str] = None
    alias: Optional[str] = None
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 0                   # 0 = from the model
    parallel: int = -1                  # -1 = auto (4 slots, unified KV)
    kv_unified: Optional[bool] = None   # None = on when parallel is auto
    cont_batching: bool = True
    batch_size: int = 2048
    ubatch_size: int = 512
    threads: int = -1
    threads_batch: int = -1
    n_gpu_layers: int = -1
    split_mode: str = "layer"
    tensor_split: Optional[List[float]] = None
    main_gpu: int = 0
    flash_attn: str = "auto"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    n_predict: int = -1
    keep: int = 0
    context_shift: bool = False
    cache_prompt: bool = True
    cache_reuse: int = 0
    slot_save_path: Optional[str] = None
    slot_prompt_similarity: float = 0.1
    cache_ram: int = 8192               # host-RAM prompt cache, MiB: -1 no limit, 0 disabled
    cache_idle_slots: bool = True       # save idle slots to it on a new task (needs cache_ram)
    slots: bool = True
    metrics: bool = False
    props: bool = False
    api_keys: List[str] = field(default_factory=list)
    cors_origins: str = "*"
    embedding: bool = False
    reranking: bool = False
    pooling: Optional[str] = None
    embd_normalize: int = 2
    jinja: bool = True
    chat_template: Optional[str] = None
    chat_template_kwargs: Dict[str, Any] = field(default_factory=dict)
    reasoning_format: str = "auto"
    reasoning_budget: int = -1          # thinking tokens: -1 unlimited, 0 end at once, N > 0 at most N
    reasoning_budget_message: str = ""  # forced before the end-of-thinking tag when the budget runs out
    lora: List[Tuple[str, float]] = field(default_factory=list)
    lora_init_without_apply: bool = False
    # sampling defaults
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    seed: int = -1
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # model loading
    mmap: bool = True
    mlock: bool = False
    check_tensors: bool = False
    kv_overrides: Dict[str, Any] = field(default_factory=dict)
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    # http
    ssl_key_file: Optional[str] = None
    ssl_cert_file: Optional[str] = None
    ui: bool = True
    static_path: Optional[str] = None
    api_prefix: str = ""
    timeout: int = 3600
    sse_ping_interval: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    log_format: str = "text"
    log_file: Optional[str] = None
    verbose: bool = False
    rpc: Optional[str] = None
    exit_on_load_error: bool = False    # set by the command line entry point

    @property
    def n_slots(self) -> int:
        return 4 if self.parallel < 0 else self.parallel

    @property
    def unified(self) -> bool:
        return self.kv_unified if self.kv_unified is not None else self.parallel < 0

    @property
    def model_name(self) -> str:
        if self.alias:
            return self.alias.split(",")[0]
        return self.model or ""


class ConfigError(ValueError):
    pass


def _bool_env(v: str) -> bool:
    return v.strip().lower() in ("1", "true", "yes", "on", "enabled")


# flags llama-server has and pyllama does not support yet: refused, never ignored
UNSUPPORTED = [
    "-mu", "--model-url", "-dr", "--docker-repo", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file",
    "-hft", "--hf-token", "-mm", "--mmproj", "-mmu", "--mmproj-url", "--mmproj-auto", "--no-mmproj",
    "-md", "--model-draft", "--spec-draft-model", "--draft", "--draft-max", "--draft-min", "--spec-type",
    "-ctxcp", "--ctx-checkpoints", "--swa-checkpoints", "--models-dir",
    "--models-preset", "--models-max", "--tools", "--mcp-servers-config", "--mcp-servers-json", "-ag",
    "--agent", "--control-vector", "--control-vector-scaled", "--override-tensor", "-ot", "-cmoe",
    "--cpu-moe", "-ncmoe", "--n-cpu-moe", "--numa", "-dev", "--device", "--list-devices", "--grammar-file",
    "-j", "--json-schema", "-jf", "--json-schema-file", "--media-path",
    "--webui-config", "--ui-config", "--webui-config-file", "--ui-config-file", "--reuse-port",
    "--sleep-idle-seconds", "-sp", "--special", "--spm-infill", "-lcs", "--lookup-cache-static",
    "-lcd", "--lookup-cache-dynamic", "--kv-unified-per-slot",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pyllama.server",
        description="An OpenAI-compatible and llama-server-compatible HTTP server for GGUF models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", help="model path (env LLAMA_ARG_MODEL)")
    g.add_argument("-a", "--alias", help="model name used by the API, comma-separated aliases (env LLAMA_ARG_ALIAS)")
    g.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="n_gpu_layers", default="auto",
                   help="layers to offload: a number, 'auto' or 'all' (env LLAMA_ARG_N_GPU_LAYERS)")
    g.add_argument("-sm", "--split-mode", choices=["none", "layer", "row", "tensor"], default="layer")
    g.add_argument("-ts", "--tensor-split", help="proportions per GPU, e.g. 3,1 (env LLAMA_ARG_TENSOR_SPLIT)")
    g.add_argument("-mg", "--main-gpu", type=int, default=0)
    g.add_argument("--mmap", dest="mmap", action="store_true", default=True)
    g.add_argument("--no-mmap", dest="mmap", action="store_false")
    g.add_argument("--mlock", action="store_true")
    g.add_argument("--check-tensors", action="store_true")
    g.add_argument("--override-kv", action="append", default=[], help="KEY=TYPE:VALUE (int, float, bool, str)")
    g.add_argument("--lora", action="append", default=[], help="LoRA adapter path(s), comma-separated")
    g.add_argument("--lora-scaled", action="append", default=[], help="FNAME:SCALE,...")
    g.add_argument("--lora-init-without-apply", action="store_true")
    g.add_argument("--rpc", help="comma-separated RPC servers host:port (env LLAMA_ARG_RPC)")
    c = p.add_argument_group("context and slots")
    c.add_argument("-c", "--ctx-size", type=int, default=0, help="context size, 0 = from the model")
    c.add_argument("-np", "--parallel", type=int, default=-1, help="number of slots, -1 = auto (4)")
    c.add_argument("-kvu", "--kv-unified", dest="kv_unified", action="store_true", default=None)
    c.add_argument("-no-kvu", "--no-kv-unified", dest="kv_unified", action="store_false")
    c.add_argument("-cb", "--cont-batching", dest="cont_batching", action="store_true", default=True)
    c.add_argument("-nocb", "--no-cont-batching", dest="cont_batching", action="store_false")
    c.add_argument("-b", "--batch-size", type=int, default=2048)
    c.add_argument("-ub", "--ubatch-size", type=int, default=512)
    c.add_argument("-t", "--threads", type=int, default=-1)
    c.add_argument("-tb", "--threads-batch", type=int, default=-1)
    c.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="auto", choices=["on", "off", "auto"])
    c.add_argument("-ctk", "--cache-type-k", default="f16")
    c.add_argument("-ctv", "--cache-type-v", default="f16")
    c.add_argument("-n", "--predict", "--n-predict", dest="n_predict", type=int, default=-1)
    c.add_argument("--keep", type=int, default=0)
    c.add_argument("--context-shift", dest="context_shift", action="store_true", default=False)
    c.add_argument("--no-context-shift", dest="context_shift", action="store_false")
    c.add_argument("-cram", "--cache-ram", dest="cache_ram", type=int, default=8192,
                   help="maximum host-RAM prompt cache size in MiB (default: 8192, -1 - no limit, 0 - disable)")
    c.add_argument("--cache-idle-slots", dest="cache_idle_slots", action="store_true", default=True,
                   help="save idle slots to the prompt cache on new task, and clear them when using unified KV "
                        "(default: enabled, requires cache-ram)")
    c.add_argument("--no-cache-idle-slots", dest="cache_idle_slots", action="store_false")
    c.add_argument("--cache-prompt", dest="cache_prompt", action="store_true", default=True)
    c.add_argument("--no-cache-prompt", dest="cache_prompt", action="store_false")
    c.add_argument("--cache-reuse", dest="cache_reuse", type=int, default=0,
                   help="min chunk size to attempt reusing from the cache via KV shifting, requires prompt "
                        "caching to be enabled (default: 0, disabled)")
    c.add_argument("-sps", "--slot-prompt-similarity", type=float, default=0.1)
    c.add_argument("--rope-freq-base", type=float, default=0.0)
    c.add_argument("--rope-freq-scale", type=float, default=0.0)
    c.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"])
    c.add_argument("--embedding", "--embeddings", dest="embedding", action="store_true")
    c.add_argument("--rerank", "--reranking", dest="reranking", action="store_true")
    c.add_argument("--embd-normalize", type=int, default=2)
    s = p.add_argument_group("sampling defaults")
    s.add_argument("--temp", "--temperature", dest="temperature", type=float, default=0.8)
    s.add_argument("--top-k", type=int, default=40)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--min-p", type=float, default=0.05)
    s.add_argument("--typical", "--typical-p", dest="typical_p", type=float, default=1.0)
    s.add_argument("-s", "--seed", type=int, default=-1)
    s.add_argument("--repeat-penalty", type=float, default=1.0)
    s.add_argument("--repeat-last-n", type=int, default=64)
    s.add_argument("--presence-penalty", type=float, default=0.0)
    s.add_argument("--frequency-penalty", type=float, default=0.0)
    t = p.add_argument_group("chat")
    t.add_argument("--jinja", dest="jinja", action="store_true", default=True)
    t.add_argument("--no-jinja", dest="jinja", action="store_false")
    t.add_argument("--chat-template", help="a built-in template name or a Jinja template")
    t.add_argument("--chat-template-file")
    t.add_argument("--chat-template-kwargs", help="JSON object passed to the template")
    t.add_argument("--reasoning-format", default="auto", choices=["none", "auto", "deepseek", "deepseek-legacy"])
    t.add_argument("-rea", "--reasoning", default="auto", metavar="on|off|auto",
                   help="use reasoning/thinking in the chat: on/off set the template's enable_thinking, auto "
                        "leaves it to the template (env LLAMA_ARG_REASONING)")
    t.add_argument("--reasoning-effort", default="default", metavar="LEVEL",
                   help="reasoning_effort given to the chat template ('default' keeps the template's; "
                        "env LLAMA_ARG_REASONING_EFFORT)")
    t.add_argument("--reasoning-budget", type=int, default=-1, metavar="N",
                   help="token budget for thinking: -1 for unrestricted, 0 for immediate end, N>0 for token budget "
                        "(env LLAMA_ARG_THINK_BUDGET)")
    t.add_argument("--reasoning-budget-message", default="", metavar="MESSAGE",
                   help="message injected before the end-of-thinking tag when the reasoning budget is exhausted "
                        "(env LLAMA_ARG_THINK_BUDGET_MESSAGE)")
    h = p.add_argument_group("http")
    h.add_argument("--host", default="127.0.0.1")
    h.add_argument("--port", type=int, default=8080)
    h.add_argument("--api-key", help="API key(s), comma-separated (env LLAMA_API_KEY)")
    h.add_argument("--api-key-file", help="file with one API key per line (# comments)")
    h.add_argument("--cors-origins", default="*")
    h.add_argument("--ssl-key-file")
    h.add_argument("--ssl-cert-file")
    h.add_argument("--ui", "--webui", dest="ui", action="store_true", default=True)
    h.add_argument("--no-ui", "--no-webui", dest="ui", action="store_false")
    h.add_argument("--path", dest="static_path", help="serve static files from this folder instead of the UI")
    h.add_argument("--api-prefix", default="")
    h.add_argument("-to", "--timeout", type=int, default=3600)
    h.add_argument("--sse-ping-interval", type=float, default=30.0)
    h.add_argument("--metrics", action="store_true", help="enable GET /metrics")
    h.add_argument("--props", action="store_true", help="enable POST /props")
    h.add_argument("--slots", dest="slots", action="store_true", default=True)
    h.add_argument("--no-slots", dest="slots", action="store_false")
    h.add_argument("--slot-save-path")
    l = p.add_argument_group("logging")
    l.add_argument("--log-format", choices=["text", "json"], default="text")
    l.add_argument("--log-file")
    l.add_argument("-v", "--verbose", "--log-verbose", dest="verbose", action="store_true")
    for flag in UNSUPPORTED:
        p.add_argument(flag, dest=f"unsupported_{flag.strip('-').replace('-', '_')}", nargs="?",
                       const=True, default=None, help=argparse.SUPPRESS)
    return p


# environment variables for flags (a flag on the command line wins)
ENV = {
    "model": "LLAMA_ARG_MODEL", "alias": "LLAMA_ARG_ALIAS", "ctx_size": "LLAMA_ARG_CTX_SIZE",
    "parallel": "LLAMA_ARG_N_PARALLEL", "kv_unified": "LLAMA_ARG_KV_UNIFIED",
    "cont_batching": "LLAMA_ARG_CONT_BATCHING", "batch_size": "LLAMA_ARG_BATCH",
    "ubatch_size": "LLAMA_ARG_UBATCH", "threads": "LLAMA_ARG_THREADS", "n_gpu_layers": "LLAMA_ARG_N_GPU_LAYERS",
    "split_mode": "LLAMA_ARG_SPLIT_MODE", "tensor_split": "LLAMA_ARG_TENSOR_SPLIT",
    "main_gpu": "LLAMA_ARG_MAIN_GPU", "flash_attn": "LLAMA_ARG_FLASH_ATTN",
    "cache_type_k": "LLAMA_ARG_CACHE_TYPE_K", "cache_type_v": "LLAMA_ARG_CACHE_TYPE_V",
    "n_predict": "LLAMA_ARG_N_PREDICT", "context_shift": "LLAMA_ARG_CONTEXT_SHIFT",
    "cache_ram": "LLAMA_ARG_CACHE_RAM", "cache_idle_slots": "LLAMA_ARG_CACHE_IDLE_SLOTS",
    "cache_prompt": "LLAMA_ARG_CACHE_PROMPT", "cache_reuse": "LLAMA_ARG_CACHE_REUSE",
    "metrics": "LLAMA_ARG_ENDPOINT_METRICS", "props": "LLAMA_ARG_ENDPOINT_PROPS",
    "slots": "LLAMA_ARG_ENDPOINT_SLOTS", "api_key": "LLAMA_API_KEY", "api_key_file": "LLAMA_ARG_API_KEY_FILE",
    "cors_origins": "LLAMA_ARG_CORS_ORIGINS", "embedding": "LLAMA_ARG_EMBEDDINGS",
    "reranking": "LLAMA_ARG_RERANKING", "pooling": "LLAMA_ARG_POOLING", "jinja": "LLAMA_ARG_JINJA",
    "chat_template_kwargs": "LLAMA_ARG_CHAT_TEMPLATE_KWARGS", "reasoning_format": "LLAMA_ARG_THINK",
    "reasoning": "LLAMA_ARG_REASONING", "reasoning_effort": "LLAMA_ARG_REASONING_EFFORT",
    "reasoning_budget": "LLAMA_ARG_THINK_BUDGET", "reasoning_budget_message": "LLAMA_ARG_THINK_BUDGET_MESSAGE",
    "temperature": "LLAMA_ARG_TEMPERATURE", "top_k": "LLAMA_ARG_TOP_K", "top_p": "LLAMA_ARG_TOP_P",
    "min_p": "LLAMA_ARG_MIN_P", "repeat_penalty": "LLAMA_ARG_REPEAT_PENALTY",
    "presence_penalty": "LLAMA_ARG_PRESENCE_PENALTY", "frequency_penalty": "LLAMA_ARG_FREQUENCY_PENALTY",
    "host": "LLAMA_ARG_HOST", "port": "LLAMA_ARG_PORT", "ssl_key_file": "LLAMA_ARG_SSL_KEY_FILE",
    "ssl_cert_file": "LLAMA_ARG_SSL_CERT_FILE", "ui": "LLAMA_ARG_UI", "static_path": "LLAMA_ARG_STATIC_PATH",
    "api_prefix": "LLAMA_ARG_API_PREFIX", "timeout": "LLAMA_ARG_TIMEOUT",
    "sse_ping_interval": "LLAMA_ARG_SSE_PING_INTERVAL", "rpc": "LLAMA_ARG_RPC",
    "rope_freq_base": "LLAMA_ARG_ROPE_FREQ_BASE", "rope_freq_scale": "LLAMA_ARG_ROPE_FREQ_SCALE",
    "log_file": "LLAMA_ARG_LOG_FILE", "mmap": "LLAMA_ARG_MMAP",
}


def _apply_env(ns: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str],
               environ: Dict[str, str]) -> None:
    given = set()
    for action in parser._actions:  # which dests the command line set explicitly
        if any(opt in argv or any(a.startswith(opt + "=") for a in argv) for opt in action.option_strings):
            given.add(action.dest)
    for dest, var in ENV.items():
        if dest in given or var not in environ:
            continue
        raw = environ[var]
        cur = getattr(ns, dest, None)
        try:
            if isinstance(cur, bool) or dest in ("kv_unified",):
                setattr(ns, dest, _bool_env(raw))
            elif isinstance(cur, int) and not isinstance(cur, bool):
                setattr(ns, dest, int(raw))
            elif isinstance(cur, float):
                setattr(ns, dest, float(raw))
            else:
                setattr(ns, dest, raw)
        except ValueError:
            raise ConfigError(f"{var}={raw!r}: not a valid {type(cur).__name__}") from None


def _parse_kv_override(spec: str) -> Tuple[str, Any]:
    try:
        key, rest = spec.split("=", 1)
        typ, val = rest.split(":", 1)
    except ValueError:
        raise ConfigError(f"--override-kv {spec!r}: expected KEY=TYPE:VALUE") from None
    conv = {"int": int, "float": float, "str": str, "bool": lambda v: v.lower() in ("true", "1")}
    if typ not in conv:
        raise ConfigError(f"--override-kv {spec!r}: type must be int, float, bool or str")
    return key, conv[typ](val)


def parse_args(argv: Optional[Sequence[str]] = None, environ: Optional[Dict[str, str]] = None) -> ServerConfig:
    """Parse flags (and LLAMA_ARG_* variables) into a ServerConfig. Raises ConfigError or SystemExit."""
    argv = list(argv if argv is not None else os.sys.argv[1:])
    environ = dict(os.environ if environ is None else environ)
    parser = build_parser()
    ns = parser.parse_args(argv)
    bad = [k for k, v in vars(ns).items() if k.startswith("unsupported_") and v is not None]
    if bad:
        names = [next(f for f in UNSUPPORTED if f.strip("-").replace("-", "_") == k[len("unsupported_"):])
                 for k in bad]
        raise ConfigError(f"not supported by pyllama yet: {', '.join(names)}")
    _apply_env(ns, parser, argv, environ)
    cfg = ServerConfig()
    for k in ("model", "alias", "host", "port", "ctx_size", "parallel", "kv_unified", "cont_batching",
              "batch_size", "ubatch_size", "threads", "threads_batch", "split_mode", "main_gpu", "flash_attn",
              "cache_type_k", "cache_type_v", "n_predict", "keep", "context_shift", "cache_prompt", "cache_reuse",
              "slot_save_path", "slot_prompt_similarity", "slots", "metrics", "props", "cors_origins", "embedding",
              "cache_ram", "cache_idle_slots",
              "reranking", "pooling", "embd_normalize", "jinja", "reasoning_format", "reasoning_budget",
              "reasoning_budget_message", "lora_init_without_apply",
              "temperature", "top_k", "top_p", "min_p", "typical_p", "seed", "repeat_penalty", "repeat_last_n",
              "presence_penalty", "frequency_penalty", "mmap", "mlock", "check_tensors", "rope_freq_base",
              "rope_freq_scale", "ssl_key_file", "ssl_cert_file", "ui", "static_path", "api_prefix", "timeout",
              "sse_ping_interval", "log_format", "log_file", "verbose", "rpc"):
        setattr(cfg, k, getattr(ns, k))
    ngl = str(ns.n_gpu_layers).lower()
    cfg.n_gpu_layers = -1 if ngl in ("auto", "all", "-1") else int(ngl)
    if ns.tensor_split:
        cfg.tensor_split = [float(x) for x in str(ns.tensor_split).replace("/", ",").split(",") if x]
    keys: List[str] = []
    if ns.api_key:
        keys += [k.strip() for k in str(ns.api_key).split(",") if k.strip()]
    if ns.api_key_file:
        try:
            with open(ns.api_key_file) as f:
                keys += [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as e:
            raise ConfigError(f"--api-key-file: {e}") from None
    cfg.api_keys = keys
    if ns.chat_template_file:
        try:
            with open(ns.chat_template_file) as f:
                cfg.chat_template = f.read()
        except OSError as e:
            raise ConfigError(f"--chat-template-file: {e}") from None
    elif ns.chat_template:
        cfg.chat_template = ns.chat_template
    if ns.chat_template_kwargs:
        try:
            cfg.chat_template_kwargs = json.loads(ns.chat_template_kwargs)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--chat-template-kwargs must be a JSON object: {e}") from None
        if not isinstance(cfg.chat_template_kwargs, dict):
            raise ConfigError("--chat-template-kwargs must be a JSON object")
    # -rea / --reasoning-effort are defaults for the template's kwargs (as llama-server's
    # default_template_kwargs); an explicit --chat-template-kwargs key wins
    rea = str(ns.reasoning).strip().lower()
    if rea in ("on", "true", "1", "enabled"):
        cfg.chat_template_kwargs.setdefault("enable_thinking", True)
    elif rea in ("off", "false", "0", "disabled"):
        cfg.chat_template_kwargs.setdefault("enable_thinking", False)
    elif rea != "auto":
        raise ConfigError(f"--reasoning: unknown value {ns.reasoning!r} (on, off or auto)")
    if ns.reasoning_effort != "default":
        cfg.chat_template_kwargs.setdefault("reasoning_effort", ns.reasoning_effort)
    for spec in ns.override_kv:
        for item in spec.split(","):
            k, v = _parse_kv_override(item)
            cfg.kv_overrides[k] = v
    for spec in ns.lora:
        cfg.lora += [(p, 1.0) for p in spec.split(",") if p]
    for spec in ns.lora_scaled:
        for item in spec.split(","):
            path, _, scale = item.rpartition(":")
            if not path:
                raise ConfigError(f"--lora-scaled {item!r}: expected FNAME:SCALE")
            cfg.lora.append((path, float(scale)))
    if not -1 <= cfg.reasoning_budget <= 2**31 - 1:
        raise ConfigError(f"--reasoning-budget must be -1 (unrestricted), 0 (immediate end) or a positive token "
                          f"count, got {cfg.reasoning_budget}")
    if cfg.rpc:
        from ..rpc import parse_endpoints, supported
        try:
            cfg.rpc = ",".join(parse_endpoints(cfg.rpc))
        except ValueError as e:
            raise ConfigError(f"--rpc: {e}") from None
        if not supported():
            raise ConfigError('--rpc: this build has no RPC backend (reinstall with CMAKE_ARGS="-DGGML_RPC=ON")')
    if not cfg.model:
        raise ConfigError("no model: pass -m/--model FILE (or set LLAMA_ARG_MODEL)")
    if cfg.n_slots < 1:
        raise ConfigError("--parallel must be >= 1 (or -1 for auto)")
    if bool(cfg.ssl_key_file) != bool(cfg.ssl_cert_file):
        raise ConfigError("TLS needs both --ssl-key-file and --ssl-cert-file")
    cfg.api_prefix = cfg.api_prefix.rstrip("/")
    if cfg.api_prefix and not cfg.api_prefix.startswith("/"):
        cfg.api_prefix = "/" + cfg.api_prefix
    return cfg
