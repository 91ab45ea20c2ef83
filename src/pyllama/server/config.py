"""Command line and environment: llama-server's flag spellings and LLAMA_ARG_* variables.

The configuration is a frozen ServerConfig of parameter groups, most of them the objects their
users take (ModelParams, ContextParams, GenerationDefaults with its SamplingParams, ChatDefaults,
EngineParams), so that the app passes them on as they are. One table, FLAGS, declares every flag:
spellings, environment variable, destination (a path such as ``context.n_batch``), parser, default
and help; it builds the argparse parser, the environment mapping and ``--help``. A row that gives
no default takes its destination field's, so each default is written once (the sampling ones are
SamplingParams'); a row spells one only where the flag's differs (``-c 0``, ``-np -1``: auto).

A flag wins over its environment variable. A llama-server flag that pyllama does not support
yet is refused with a clear message (never silently ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..engine import EngineParams
from ..frontend import ChatDefaults, GenerationDefaults
from ..params import CACHE_TYPES, ContextParams, ModelParams, SamplingParams

AUTO_SLOTS = 4      # -np -1 (auto): llama-server's 4 slots, with a unified KV cache


@dataclass(frozen=True)
class ModelGroup:
    """What to load (ModelBundle.load's arguments): the file, how, its chat template, LoRA adapters."""

    path: Optional[str] = None
    alias: Optional[str] = None                 # the API's model name, comma-separated aliases
    params: ModelParams = field(default_factory=ModelParams)
    chat_template: Optional[str] = None         # a built-in name or a Jinja template (None: the model's)
    jinja: bool = True
    lora: Tuple[Tuple[str, float], ...] = ()    # (path, scale) per adapter
    lora_init_without_apply: bool = False


@dataclass(frozen=True)
class HttpGroup:
    """Listening, TLS, authentication, CORS, the web UI and the HTTP limits."""

    host: str = "127.0.0.1"                     # comma-separated: several addresses
    port: int = 8080
    api_keys: Tuple[str, ...] = ()
    cors_origins: str = "*"
    ssl_key_file: Optional[str] = None
    ssl_cert_file: Optional[str] = None
    ui: bool = True
    static_path: Optional[str] = None           # serve this folder instead of the UI
    api_prefix: str = ""                        # "" or "/prefix" (no trailing slash)
    timeout: int = 3600                         # seconds an idle keep-alive connection is held; body read deadline
    sse_ping_interval: float = 30.0
    max_body_bytes: int = 64 * 1024 * 1024
    timeout_headers: float = 30.0               # seconds a connection has to deliver a request head
    max_connections: int = 1024                 # open connections at most (0: no cap); past it a 503
    shutdown_timeout: float = 30.0              # seconds SIGTERM waits for in-flight requests

    def __post_init__(self) -> None:
        if not self.timeout_headers > 0:
            raise ValueError(f"--timeout-headers must be > 0, got {self.timeout_headers}")
        if self.max_connections < 0:
            raise ValueError(f"--max-connections must be >= 0 (0 = no cap), got {self.max_connections}")
        if not self.shutdown_timeout >= 0:
            raise ValueError(f"--shutdown-timeout must be >= 0, got {self.shutdown_timeout}")


@dataclass(frozen=True)
class EndpointsGroup:
    """The endpoints a flag turns on or off (llama-server's defaults), and their settings."""

    slots: bool = True
    metrics: bool = False
    props: bool = False                         # POST /props
    embeddings: bool = False
    reranking: bool = False
    embd_normalize: int = 2                     # /embeddings' default normalization
    slot_save_path: Optional[str] = None        # slot save/restore (None: off)


@dataclass(frozen=True)
class LogGroup:
    format: str = "text"                        # text or json
    file: Optional[str] = None
    verbose: bool = False


@dataclass(frozen=True)
class ServerConfig:
    """The server's configuration (see parse_args). Frozen: ``with_`` makes changed copies."""

    model: ModelGroup = field(default_factory=ModelGroup)
    context: ContextParams = field(default_factory=ContextParams)
    engine: EngineParams = field(default_factory=EngineParams)
    generation: GenerationDefaults = field(default_factory=GenerationDefaults)  # with the sampling defaults
    chat: ChatDefaults = field(default_factory=ChatDefaults)
    http: HttpGroup = field(default_factory=HttpGroup)
    endpoints: EndpointsGroup = field(default_factory=EndpointsGroup)
    log: LogGroup = field(default_factory=LogGroup)
    exit_on_load_error: bool = False            # the command line server exits when the model fails to load

    @property
    def n_slots(self) -> int:
        return self.engine.n_parallel

    @property
    def unified(self) -> bool:
        return self.engine.kv_unified

    @property
    def sampling(self) -> SamplingParams:
        return self.generation.sampling

    @property
    def model_name(self) -> str:
        if self.model.alias:
            return self.model.alias.split(",")[0]
        return self.model.path or ""

    def with_(self, **changes: Any) -> "ServerConfig":
        """A copy with fields changed, each named by its path (``**{"engine.kv_unified": False}``) or,
        where one group alone has a field of that name, by the name (``max_body_bytes=1000``)."""
        paths = list(_paths(self))
        cfg = self
        for key, value in changes.items():
            path = tuple(key.split("."))
            if "." not in key:
                found = [p for p in paths if p[-1] == key]
                if len(found) > 1:
                    raise ValueError(f"{key!r} is ambiguous: name one of {', '.join('.'.join(p) for p in found)}")
                path = found[0] if found else path
            if path not in paths:
                raise ValueError(f"ServerConfig has no field {key!r}")
            cfg = _replace_at(cfg, path, value)
        return cfg


def _paths(obj: Any, prefix: Tuple[str, ...] = ()) -> Iterator[Tuple[str, ...]]:
    """The path of every field of a dataclass, nested groups' fields included."""
    for f in fields(obj):
        path = (*prefix, f.name)
        yield path
        value = getattr(obj, f.name)
        if is_dataclass(value):
            yield from _paths(value, path)


def _replace_at(obj: Any, path: Sequence[str], value: Any) -> Any:
    head = path[0]
    return replace(obj, **{head: value if len(path) == 1 else _replace_at(getattr(obj, head), path[1:], value)})


class ConfigError(ValueError):
    pass


# ---------------------------------------------------------------- the flag table

def _bool_env(v: str) -> bool:
    return v.strip().lower() in ("1", "true", "yes", "on", "enabled")


def gpu_layers(v: str) -> int:
    """-ngl: a number, 'auto' or 'all' (both -1: every layer the devices take)."""
    v = str(v).strip().lower()
    return -1 if v in ("auto", "all", "-1") else int(v)


def proportions(v: str) -> Optional[Tuple[float, ...]]:
    """-ts: "3,1" (or "3/1") -> (3.0, 1.0); "" -> None."""
    return tuple(float(x) for x in str(v).replace("/", ",").split(",") if x) or None


class _FromField:
    def __repr__(self) -> str:
        return "FROM_FIELD"


FROM_FIELD: Any = _FromField()     # a flag's default: its destination field's


@dataclass(frozen=True)
class Flag:
    """One flag. ``names``: its spellings (space-separated; for a switch, those that turn it on,
    ``off`` those that turn it off); ``to``: where its value goes, a ServerConfig path, or a bare
    name for a value parse_args combines with others; ``type``: the parser of a value (``bool``: a
    switch, ``None``: a string); ``default``: FROM_FIELD takes the destination field's; ``const``: the
    value may be left out, this one is taken; ``append``: repeatable, every value kept in order.
    ``help`` may use ``%(default)s``; the default and the variable are added where it does not."""

    names: str
    to: str
    env: Optional[str] = None
    type: Optional[Callable[[str], Any]] = None
    default: Any = FROM_FIELD
    help: str = ""
    off: str = ""
    metavar: Optional[str] = None
    choices: Optional[Tuple[str, ...]] = None
    const: Any = None
    append: bool = False

    @property
    def spellings(self) -> List[str]:
        return self.names.split() + self.off.split()


_POOLING = ("none", "mean", "cls", "last", "rank")
_S = "generation.sampling."

# (help section, rows): every flag of the server; llama-server's help texts
FLAGS: Tuple[Tuple[str, Tuple[Flag, ...]], ...] = (
    ("model", (
        Flag("-m --model", "model.path", "LLAMA_ARG_MODEL", metavar="FNAME", help="model path to load"),
        Flag("-a --alias", "model.alias", "LLAMA_ARG_ALIAS", metavar="STRING",
             help="set model name aliases, comma-separated (to be used by API)"),
        Flag("-ngl --gpu-layers --n-gpu-layers", "model.params.n_gpu_layers", "LLAMA_ARG_N_GPU_LAYERS", gpu_layers,
             "auto", "max. number of layers to store in VRAM, either an exact number, 'auto', or 'all' "
             "(default: %(default)s)", metavar="N"),
        Flag("-sm --split-mode", "model.params.split_mode", "LLAMA_ARG_SPLIT_MODE", choices=("none", "layer", "row",
             "tensor"), help="how to split the model across multiple GPUs: none (one GPU only), layer (split layers "
             "and KV across GPUs, pipelined), row (split weights across GPUs by rows, parallelized), tensor (split "
             "weights and KV across GPUs, parallelized, experimental)"),
        Flag("-ts --tensor-split", "model.params.tensor_split", "LLAMA_ARG_TENSOR_SPLIT", proportions,
             metavar="N0,N1,...", help="fraction of the model to offload to each GPU, comma-separated list of "
             "proportions, e.g. 3,1"),
        Flag("-mg --main-gpu", "model.params.main_gpu", "LLAMA_ARG_MAIN_GPU", int, metavar="INDEX",
             help="the GPU to use for the model (with split-mode = none), or for intermediate results and KV (with "
             "split-mode = row)"),
        Flag("--mmap", "model.params.use_mmap", "LLAMA_ARG_MMAP", bool, off="--no-mmap",
             help="whether to memory-map the model (if disabled, slower load but may reduce pageouts if not using "
             "mlock)"),
        Flag("--mlock", "model.params.use_mlock", type=bool,
             help="force the system to keep the model in RAM rather than swapping or compressing"),
        Flag("--check-tensors", "model.params.check_tensors", type=bool,
             help="check model tensor data for invalid values"),
        Flag("--override-kv", "override_kv", append=True, metavar="KEY=TYPE:VALUE,...",
             help="advanced option to override model metadata by key; comma-separated for several. types: int, "
             "float, bool, str. example: --override-kv tokenizer.ggml.add_bos_token=bool:false"),
        Flag("--lora", "lora", append=True, metavar="FNAME",
             help="path to LoRA adapter (use comma-separated values to load multiple adapters)"),
        Flag("--lora-scaled", "lora_scaled", append=True, metavar="FNAME:SCALE,...",
             help="path to LoRA adapter with user defined scaling (format: FNAME:SCALE,...)"),
        Flag("--lora-init-without-apply", "model.lora_init_without_apply", type=bool,
             help="load LoRA adapters without applying them (apply later via POST /lora-adapters)"),
        Flag("--rpc", "model.params.rpc_servers", "LLAMA_ARG_RPC", metavar="SERVERS",
             help="comma-separated list of RPC servers (host:port)"),
    )),
    ("context and slots", (
        Flag("-c --ctx-size", "context.n_ctx", "LLAMA_ARG_CTX_SIZE", int, 0,
             "size of the prompt context (default: %(default)s, 0 = loaded from model)"),
        Flag("-np --parallel", "engine.n_parallel", "LLAMA_ARG_N_PARALLEL", int, -1,
             f"number of server slots (default: %(default)s, -1 = auto: {AUTO_SLOTS} slots, unified KV)"),
        Flag("-kvu --kv-unified", "engine.kv_unified", "LLAMA_ARG_KV_UNIFIED", bool, None,
             "use single unified KV buffer shared across all sequences (default: enabled if number of slots is "
             "auto)", off="-no-kvu --no-kv-unified"),
        Flag("-cb --cont-batching", "engine.cont_batching", "LLAMA_ARG_CONT_BATCHING", bool,
             help="whether to enable continuous batching (a.k.a dynamic batching)", off="-nocb --no-cont-batching"),
        Flag("-b --batch-size", "context.n_batch", "LLAMA_ARG_BATCH", int, help="logical maximum batch size"),
        Flag("-ub --ubatch-size", "context.n_ubatch", "LLAMA_ARG_UBATCH", int, help="physical maximum batch size"),
        Flag("-t --threads", "context.n_threads", "LLAMA_ARG_THREADS", int, -1,
             "number of CPU threads to use during generation (default: %(default)s: the CPUs this process may use)"),
        Flag("-tb --threads-batch", "context.n_threads_batch", None, int, -1,
             "number of threads to use during batch and prompt processing (default: same as --threads)"),
        Flag("-fa --flash-attn", "context.flash_attn", "LLAMA_ARG_FLASH_ATTN", const="on",
             choices=("on", "off", "auto"),
             help="set Flash Attention use ('on', 'off', or 'auto', default: '%(default)s')"),
        Flag("-ctk --cache-type-k", "context.type_k", "LLAMA_ARG_CACHE_TYPE_K", metavar="TYPE",
             help=f"KV cache data type for K, one of {', '.join(CACHE_TYPES)}"),
        Flag("-ctv --cache-type-v", "context.type_v", "LLAMA_ARG_CACHE_TYPE_V", metavar="TYPE",
             help=f"KV cache data type for V, one of {', '.join(CACHE_TYPES)}"),
        Flag("-n --predict --n-predict", "generation.n_predict", "LLAMA_ARG_N_PREDICT", int,
             help="number of tokens to predict (default: %(default)s, -1 = infinity)"),
        Flag("--keep", "engine.n_keep", None, int,
             help="number of tokens to keep from the initial prompt (default: %(default)s, -1 = all)"),
        Flag("--context-shift", "engine.context_shift", "LLAMA_ARG_CONTEXT_SHIFT", bool,
             help="whether to use context shift on infinite text generation", off="--no-context-shift"),
        Flag("-cram --cache-ram", "engine.cache_ram_mib", "LLAMA_ARG_CACHE_RAM", int, 8192,
             "maximum host-RAM prompt cache size in MiB (default: %(default)s, -1 - no limit, 0 - disable)"),
        Flag("--max-queued", "engine.max_queued", "LLAMA_ARG_MAX_QUEUED", int,
             help="pyllama: requests that may wait for a slot; beyond, 503 with Retry-After (0: no bound; "
                  "default: %(default)s)"),
        Flag("--cache-idle-slots", "engine.cache_idle_slots", "LLAMA_ARG_CACHE_IDLE_SLOTS", bool,
             help="save idle slots to the prompt cache on new task, and clear them when using unified KV (requires "
             "cache-ram)", off="--no-cache-idle-slots"),
        Flag("--cache-prompt", "generation.cache_prompt", "LLAMA_ARG_CACHE_PROMPT", bool,
             help="whether to enable prompt caching", off="--no-cache-prompt"),
        Flag("--cache-reuse", "generation.cache_reuse", "LLAMA_ARG_CACHE_REUSE", int,
             help="min chunk size to attempt reusing from the cache via KV shifting, requires prompt caching to be "
             "enabled (default: %(default)s, disabled)"),
        Flag("-sps --slot-prompt-similarity", "engine.slot_prompt_similarity", None, float, metavar="SIMILARITY",
             help="how much the prompt of a request must match the prompt of a slot in order to use that slot "
             "(default: %(default)s, 0.0 = disabled)"),
        Flag("--rope-freq-base", "context.rope_freq_base", "LLAMA_ARG_ROPE_FREQ_BASE", float,
             help="RoPE base frequency, used by NTK-aware scaling (default: loaded from model)"),
        Flag("--rope-freq-scale", "context.rope_freq_scale", "LLAMA_ARG_ROPE_FREQ_SCALE", float,
             help="RoPE frequency scaling factor, expands context by a factor of 1/N (default: loaded from model)"),
        Flag("--pooling", "context.pooling_type", "LLAMA_ARG_POOLING", default=None, choices=_POOLING,
             help="pooling type for embeddings, use model default if unspecified"),
        Flag("--embedding --embeddings", "endpoints.embeddings", "LLAMA_ARG_EMBEDDINGS", bool,
             help="restrict to only support embedding use case; use only with dedicated embedding models"),
        Flag("--rerank --reranking", "endpoints.reranking", "LLAMA_ARG_RERANKING", bool,
             help="enable reranking endpoint on server"),
        Flag("--embd-normalize", "endpoints.embd_normalize", None, int,
             help="normalisation for embeddings (default: %(default)s) (-1=none, 0=max absolute int16, 1=taxicab, "
             "2=euclidean, >2=p-norm)"),
    )),
    ("sampling defaults", (
        Flag("--temp --temperature", _S + "temperature", "LLAMA_ARG_TEMPERATURE", float,
             help="temperature (default: %(default)s)"),
        Flag("--top-k", _S + "top_k", "LLAMA_ARG_TOP_K", int,
             help="top-k sampling (default: %(default)s, 0 = disabled)"),
        Flag("--top-p", _S + "top_p", "LLAMA_ARG_TOP_P", float,
             help="top-p sampling (default: %(default)s, 1.0 = disabled)"),
        Flag("--min-p", _S + "min_p", "LLAMA_ARG_MIN_P", float,
             help="min-p sampling (default: %(default)s, 0.0 = disabled)"),
        Flag("--typical --typical-p", _S + "typical_p", None, float,
             help="locally typical sampling, parameter p (default: %(default)s, 1.0 = disabled)"),
        # -1 is the flag's spelling of SamplingParams' DEFAULT_SEED (a random seed), as llama-server's
        Flag("-s --seed", _S + "seed", None, int, -1, "RNG seed (default: %(default)s, use random seed for -1)",
             metavar="SEED"),
        Flag("--repeat-penalty", _S + "repeat_penalty", "LLAMA_ARG_REPEAT_PENALTY", float,
             help="penalize repeat sequence of tokens (default: %(default)s, 1.0 = disabled)"),
        Flag("--repeat-last-n", _S + "repeat_last_n", None, int,
             help="last n tokens to consider for penalize (default: %(default)s, 0 = disabled, -1 = ctx_size)"),
        Flag("--presence-penalty", _S + "presence_penalty", "LLAMA_ARG_PRESENCE_PENALTY", float,
             help="repeat alpha presence penalty (default: %(default)s, 0.0 = disabled)"),
        Flag("--frequency-penalty", _S + "frequency_penalty", "LLAMA_ARG_FREQUENCY_PENALTY", float,
             help="repeat alpha frequency penalty (default: %(default)s, 0.0 = disabled)"),
    )),
    ("chat", (
        Flag("--jinja", "model.jinja", "LLAMA_ARG_JINJA", bool, off="--no-jinja",
             help="whether to use jinja template engine for chat"),
        Flag("--chat-template", "model.chat_template", metavar="JINJA_TEMPLATE",
             help="set custom jinja chat template: a built-in template name or a Jinja template (default: template "
             "taken from model's metadata)"),
        Flag("--chat-template-file", "chat_template_file", metavar="JINJA_TEMPLATE_FILE", default=None,
             help="set custom jinja chat template file (default: template taken from model's metadata)"),
        Flag("--chat-template-kwargs", "chat.chat_template_kwargs", "LLAMA_ARG_CHAT_TEMPLATE_KWARGS", default=None,
             metavar="STRING", help="sets additional params for the json template parser, must be a valid json "
             "object string, e.g. '{\"key1\":\"value1\",\"key2\":\"value2\"}'"),
        Flag("--reasoning-format", "chat.reasoning_format", "LLAMA_ARG_THINK", default="auto",
             choices=("none", "auto", "deepseek", "deepseek-legacy"),
             help="controls whether thought tags are allowed and/or extracted from the response, and in which format "
             "they're returned: none leaves thoughts unparsed in message.content, deepseek puts thoughts in "
             "message.reasoning_content, deepseek-legacy keeps <think> tags in message.content while also "
             "populating message.reasoning_content"),
        Flag("-rea --reasoning", "reasoning", "LLAMA_ARG_REASONING", default="auto", metavar="on|off|auto",
             help="use reasoning/thinking in the chat: on/off set the template's enable_thinking, auto leaves it "
             "to the template"),
        Flag("--reasoning-effort", "reasoning_effort", "LLAMA_ARG_REASONING_EFFORT", default="default",
             metavar="LEVEL", help="reasoning_effort given to the chat template ('default' keeps the template's)"),
        Flag("--reasoning-budget", "generation.reasoning_budget", "LLAMA_ARG_THINK_BUDGET", int, metavar="N",
             help="token budget for thinking: -1 for unrestricted, 0 for immediate end, N>0 for token budget "
             "(default: %(default)s)"),
        Flag("--reasoning-budget-message", "generation.reasoning_budget_message", "LLAMA_ARG_THINK_BUDGET_MESSAGE",
             metavar="MESSAGE", help="message injected before the end-of-thinking tag when the reasoning budget is "
             "exhausted (default: none)"),
    )),
    ("http", (
        Flag("--host", "http.host", "LLAMA_ARG_HOST", metavar="HOST",
             help="IP addresses to listen on, comma-separated"),
        Flag("--port", "http.port", "LLAMA_ARG_PORT", int, metavar="PORT", help="port to listen"),
        Flag("--api-key", "api_key", "LLAMA_API_KEY", default=None, metavar="KEY",
             help="API key to use for authentication, multiple keys can be provided as a comma-separated list "
             "(default: none)"),
        Flag("--api-key-file", "api_key_file", "LLAMA_ARG_API_KEY_FILE", default=None, metavar="FNAME",
             help="path to file containing API keys, one per line; lines starting with a hash are treated as "
             "comments (default: none)"),
        Flag("--cors-origins", "http.cors_origins", "LLAMA_ARG_CORS_ORIGINS", metavar="ORIGINS",
             help="comma-separated list of allowed origins for CORS (default: %(default)s); the special value "
             "'localhost' reflects the Origin header only if it is localhost"),
        Flag("--ssl-key-file", "http.ssl_key_file", "LLAMA_ARG_SSL_KEY_FILE", metavar="FNAME",
             help="path to file a PEM-encoded SSL private key"),
        Flag("--ssl-cert-file", "http.ssl_cert_file", "LLAMA_ARG_SSL_CERT_FILE", metavar="FNAME",
             help="path to file a PEM-encoded SSL certificate"),
        Flag("--ui --webui", "http.ui", "LLAMA_ARG_UI", bool, off="--no-ui --no-webui",
             help="whether to enable the Web UI"),
        Flag("--path", "http.static_path", "LLAMA_ARG_STATIC_PATH", metavar="PATH",
             help="path to serve static files from, instead of the Web UI"),
        Flag("--api-prefix", "http.api_prefix", "LLAMA_ARG_API_PREFIX", metavar="PREFIX",
             help="prefix path the server serves from, without the trailing slash"),
        Flag("-to --timeout", "http.timeout", "LLAMA_ARG_TIMEOUT", int,
             help="server read/write timeout in seconds (default: %(default)s)"),
        Flag("--timeout-headers", "http.timeout_headers", "LLAMA_ARG_TIMEOUT_HEADERS", float, metavar="SECONDS",
             help="seconds a connection has to send a complete request head, after connecting or after its previous "
             "response; then it is closed (default: %(default)s)"),
        Flag("--max-connections", "http.max_connections", "LLAMA_ARG_MAX_CONNECTIONS", int,
             help="maximum number of open connections; one more is answered 503 and closed (default: %(default)s, "
             "0 = no limit)"),
        Flag("--shutdown-timeout", "http.shutdown_timeout", "LLAMA_ARG_SHUTDOWN_TIMEOUT", float, metavar="SECONDS",
             help="seconds SIGTERM/SIGINT waits for in-flight requests before cancelling them; the process is ended "
             "5 s after that at the latest (default: %(default)s)"),
        Flag("--sse-ping-interval", "http.sse_ping_interval", "LLAMA_ARG_SSE_PING_INTERVAL", float,
             help="server SSE ping interval in seconds (default: %(default)s)"),
        Flag("--metrics", "endpoints.metrics", "LLAMA_ARG_ENDPOINT_METRICS", bool,
             help="enable prometheus compatible metrics endpoint (GET /metrics)"),
        Flag("--props", "endpoints.props", "LLAMA_ARG_ENDPOINT_PROPS", bool,
             help="enable changing global properties via POST /props"),
        Flag("--slots", "endpoints.slots", "LLAMA_ARG_ENDPOINT_SLOTS", bool, off="--no-slots",
             help="expose slots monitoring endpoint"),
        Flag("--slot-save-path", "endpoints.slot_save_path", metavar="PATH",
             help="path to save slot kv cache (default: disabled)"),
    )),
    ("logging", (
        Flag("--log-format", "log.format", choices=("text", "json"), help="log lines as text or as JSON objects"),
        Flag("--log-file", "log.file", "LLAMA_ARG_LOG_FILE", metavar="FNAME", help="Log to file"),
        Flag("-v --verbose --log-verbose", "log.verbose", type=bool,
             help="log all messages (llama.cpp's too), useful for debugging"),
    )),
)

# environment variables for flags (a flag on the command line wins): destination -> variable
ENV = {row.to: row.env for _, rows in FLAGS for row in rows if row.env}

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


def _unsupported_dest(flag: str) -> str:
    return "unsupported_" + flag.strip("-").replace("-", "_")


class _Switch(argparse.Action):
    """A switch: its ``off`` spellings store False, the others True."""

    def __init__(self, option_strings: List[str], dest: str, off: Sequence[str] = (), **kw: Any):
        super().__init__(option_strings, dest, nargs=0, **kw)
        self.off = frozenset(off)

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any,
                 option_string: Optional[str] = None) -> None:
        setattr(ns, self.dest, option_string not in self.off)


def _default(row: Flag, template: Any) -> Any:
    """The row's default: its own, else its destination field's declared default."""
    if row.default is not FROM_FIELD or "." not in row.to:
        return None if row.default is FROM_FIELD else row.default
    *parents, name = row.to.split(".")
    for p in parents:
        template = getattr(template, p)
    f = {f.name: f for f in fields(template)}[name]
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def _help(row: Flag, default: Any) -> str:
    h = row.help
    if "default" not in h:
        if row.type is bool:
            h += f" (default: {'enabled' if default else 'disabled'})"
        elif default not in (None, ""):
            h += " (default: %(default)s)"
    return h + (f" (env: {row.env})" if row.env else "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pyllama.server",
        description="An OpenAI-compatible and llama-server-compatible HTTP server for GGUF models.")
    template = ServerConfig()
    for title, rows in FLAGS:
        g = p.add_argument_group(title)
        for row in rows:
            default = _default(row, template)
            kw: Dict[str, Any] = dict(dest=row.to, default=default, help=_help(row, default))
            if row.type is bool:
                g.add_argument(*row.spellings, action=_Switch, off=row.off.split(), **kw)
                continue
            kw.update(metavar=row.metavar or (None if row.choices else "N"), choices=row.choices)
            if row.type is not None:
                kw["type"] = row.type
            if row.append:
                kw.update(action="append", default=[])
            if row.const is not None:
                kw.update(nargs="?", const=row.const)
            g.add_argument(*row.names.split(), **kw)
    for flag in UNSUPPORTED:
        p.add_argument(flag, dest=_unsupported_dest(flag), nargs="?", const=True, default=None, help=argparse.SUPPRESS)
    return p


def _apply_env(ns: argparse.Namespace, argv: Sequence[str], environ: Mapping[str, str]) -> None:
    """Set each flag that the command line did not give from its variable, if set."""
    for _, rows in FLAGS:
        for row in rows:
            if not row.env or row.env not in environ:
                continue
            if any(opt in argv or any(a.startswith(opt + "=") for a in argv) for opt in row.spellings):
                continue
            raw = environ[row.env]
            conv = _bool_env if row.type is bool else row.type or str
            try:
                setattr(ns, row.to, conv(raw))
            except ValueError:
                raise ConfigError(f"{row.env}={raw!r}: not a valid {conv.__name__}") from None


# ---------------------------------------------------------------- flags -> ServerConfig

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


def _read(path: str, flag: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{flag}: {e}") from None


def _combine(v: Dict[str, Any]) -> None:
    """The flags that several make one field, or that a file or JSON gives: bare names -> paths."""
    keys: List[str] = []
    if v["api_key"]:
        keys += [k.strip() for k in str(v["api_key"]).split(",") if k.strip()]
    if v["api_key_file"]:
        keys += [ln.strip() for ln in _read(v["api_key_file"], "--api-key-file").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
    v["http.api_keys"] = tuple(keys)
    if v["chat_template_file"]:
        v["model.chat_template"] = _read(v["chat_template_file"], "--chat-template-file")
    kwargs: Dict[str, Any] = {}
    if v["chat.chat_template_kwargs"]:
        try:
            kwargs = json.loads(v["chat.chat_template_kwargs"])
        except json.JSONDecodeError as e:
            raise ConfigError(f"--chat-template-kwargs must be a JSON object: {e}") from None
        if not isinstance(kwargs, dict):
            raise ConfigError("--chat-template-kwargs must be a JSON object")
    # -rea / --reasoning-effort are defaults for the template's kwargs (as llama-server's
    # default_template_kwargs); an explicit --chat-template-kwargs key wins
    rea = str(v["reasoning"]).strip().lower()
    if rea in ("on", "true", "1", "enabled"):
        kwargs.setdefault("enable_thinking", True)
    elif rea in ("off", "false", "0", "disabled"):
        kwargs.setdefault("enable_thinking", False)
    elif rea != "auto":
        raise ConfigError(f"--reasoning: unknown value {v['reasoning']!r} (on, off or auto)")
    if v["reasoning_effort"] != "default":
        kwargs.setdefault("reasoning_effort", v["reasoning_effort"])
    v["chat.chat_template_kwargs"] = kwargs
    overrides = dict(_parse_kv_override(item) for spec in v["override_kv"] for item in spec.split(","))
    v["model.params.kv_overrides"] = overrides or None
    lora = [(p, 1.0) for spec in v["lora"] for p in spec.split(",") if p]
    for spec in v["lora_scaled"]:
        for item in spec.split(","):
            path, _, scale = item.rpartition(":")
            if not path:
                raise ConfigError(f"--lora-scaled {item!r}: expected FNAME:SCALE")
            lora.append((path, float(scale)))
    v["model.lora"] = tuple(lora)
    for k in ("api_key", "api_key_file", "chat_template_file", "reasoning", "reasoning_effort", "override_kv", "lora",
              "lora_scaled"):
        del v[k]


def _check(v: Dict[str, Any]) -> None:
    """The errors a flag's own parser cannot see, and the values that follow from others."""
    budget = v["generation.reasoning_budget"]
    if not -1 <= budget <= 2**31 - 1:
        raise ConfigError(f"--reasoning-budget must be -1 (unrestricted), 0 (immediate end) or a positive token "
                          f"count, got {budget}")
    if v["model.params.rpc_servers"]:
        from ..rpc import parse_endpoints, supported
        try:
            v["model.params.rpc_servers"] = parse_endpoints(v["model.params.rpc_servers"])
        except ValueError as e:
            raise ConfigError(f"--rpc: {e}") from None
        if not supported():
            raise ConfigError('--rpc: this build has no RPC backend (reinstall with CMAKE_ARGS="-DGGML_RPC=ON")')
    else:
        v["model.params.rpc_servers"] = None
    if not v["model.path"]:
        raise ConfigError("no model: pass -m/--model FILE (or set LLAMA_ARG_MODEL)")
    parallel = v["engine.n_parallel"]
    if v["engine.kv_unified"] is None:
        v["engine.kv_unified"] = parallel < 0
    v["engine.n_parallel"] = AUTO_SLOTS if parallel < 0 else parallel
    if v["engine.n_parallel"] < 1:
        raise ConfigError("--parallel must be >= 1 (or -1 for auto)")
    if bool(v["http.ssl_key_file"]) != bool(v["http.ssl_cert_file"]):
        raise ConfigError("TLS needs both --ssl-key-file and --ssl-cert-file")
    prefix = v["http.api_prefix"].rstrip("/")
    v["http.api_prefix"] = "/" + prefix if prefix and not prefix.startswith("/") else prefix
    # the context: the library's defaults for threads, one micro-batch at most a batch, the
    # embedding endpoints' pooling
    for k in ("context.n_threads", "context.n_threads_batch"):
        if v[k] <= 0:
            del v[k]
    v["context.n_ubatch"] = min(v["context.n_ubatch"], v["context.n_batch"])
    rerank = v["endpoints.reranking"]
    v["context.embeddings"] = v["endpoints.embeddings"] or rerank
    v["context.pooling_type"] = "rank" if rerank else (v["context.pooling_type"] or "unspecified")


def _build(template: Any, tree: Mapping[str, Any]) -> Any:
    """``type(template)(**tree)``, a nested group built the same way from its subtree."""
    kw = {}
    for k, sub in tree.items():
        t = getattr(template, k)
        kw[k] = _build(t, sub) if is_dataclass(t) and isinstance(sub, dict) else sub
    return type(template)(**kw)


def parse_args(argv: Optional[Sequence[str]] = None, environ: Optional[Dict[str, str]] = None) -> ServerConfig:
    """Parse flags (and LLAMA_ARG_* variables) into a ServerConfig. Raises ConfigError or SystemExit."""
    argv = list(argv if argv is not None else sys.argv[1:])
    environ = dict(os.environ if environ is None else environ)
    ns = build_parser().parse_args(argv)
    bad = [f for f in UNSUPPORTED if getattr(ns, _unsupported_dest(f)) is not None]
    if bad:
        raise ConfigError(f"not supported by pyllama yet: {', '.join(bad)}")
    _apply_env(ns, argv, environ)
    v = {k: x for k, x in vars(ns).items() if not k.startswith("unsupported_")}
    _combine(v)
    _check(v)
    tree: Dict[str, Any] = {}
    for path, x in v.items():
        *parents, name = path.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[name] = x
    try:
        return _build(ServerConfig(), tree)
    except (ValueError, TypeError) as e:    # a value the groups refuse (e.g. -b 0, -s -5)
        raise ConfigError(str(e)) from None
