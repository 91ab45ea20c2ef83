"""Small GGUF models with seeded random weights and a real vocabulary.

For tests, examples and benchmarks: nothing is ever downloaded.  The weights
are random (so the text a model generates is gibberish), but the file is a
complete LLaMA-architecture GGUF that llama.cpp loads and runs, and the
tokenizer is a real one copied from the vocabulary files that ship with
llama.cpp (``vendor/llama.cpp/models/ggml-vocab-*.gguf``), so tokenization,
detokenization, special tokens and (where the vocab has one) the chat template
behave like the real model family.

    >>> from pyllama.testing import write_random_model
    >>> path = write_random_model(tmp_path / "tiny.gguf")   # 4.2M params, 17 MB (f32), llama-spm vocab
    >>> path = write_random_model(tmp_path / "m.gguf", **PRESETS["125m"], ftype="q8_0")

Command line (for benchmarks)::

    python -m pyllama.testing OUT.gguf --preset 125m --ftype q8_0 --vocab llama-spm --seed 0

The same arguments always give a byte-identical file.

Requires the ``gguf`` package (``pip install gguf``) and numpy.  This module
does not use the compiled extension, but ``import pyllama.testing`` runs
``pyllama/__init__.py``, which does; without a built extension run the file
directly (``python src/pyllama/testing.py OUT.gguf ...``) or load it by path.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pathlib
import struct
import sys
import time
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

try:
    import gguf
    from gguf import quants as _gguf_quants
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "pyllama.testing needs the 'gguf' package (pip install gguf, or pip install pyllama[test])"
    ) from _exc

__all__ = [
    "PRESETS",
    "FTYPES",
    "VOCAB_DIR_ENV",
    "available_vocabs",
    "count_params",
    "default_vocab_dir",
    "read_vocab",
    "vocab_path",
    "write_random_model",
    "main",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Environment variable naming a directory of ``ggml-vocab-*.gguf`` files.
VOCAB_DIR_ENV = "PYLLAMA_VOCAB_DIR"

#: Standard deviation of the random weight matrices (norm weights are 1.0).
WEIGHT_STD = 0.02

# ftype name -> (tensor type of 2-D weight matrices, general.file_type)
FTYPES: Dict[str, Tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

#: Model shapes, as keyword arguments for :func:`write_random_model`.
#: Parameter counts below are with the 32000-token llama-spm vocab and an
#: untied ``output`` matrix.
PRESETS: Dict[str, Dict[str, Any]] = {
    # 2 layers, ~4.2M params (4.1M of them the two 32000x64 embedding matrices)
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_head_kv=4, n_ff=256, n_ctx_train=2048),
    # GPT-2-small-like body (113M non-embedding params), ~162M in total
    "125m": dict(n_embd=768, n_layer=12, n_head=12, n_head_kv=12, n_ff=3072, n_ctx_train=2048),
    # TinyLlama-1.1B shape (GQA 32/4), ~1.1B params
    "1b": dict(n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_ctx_train=2048),
}

_SUPPORTED_ARCHS = ("llama",)


# --------------------------------------------------------------------------------------
# vocabularies


def default_vocab_dir() -> pathlib.Path:
    """``$PYLLAMA_VOCAB_DIR`` if set, else ``vendor/llama.cpp/models`` of the source tree (an editable
    install), else ``vendor/llama.cpp/models`` under the current directory (an installed package used
    from a checkout)."""
    env = os.environ.get(VOCAB_DIR_ENV)
    if env:
        return pathlib.Path(env)
    # src/pyllama/testing.py -> <repo>/vendor/llama.cpp/models
    here = pathlib.Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models"
    cwd = pathlib.Path.cwd() / "vendor" / "llama.cpp" / "models"
    return here if here.is_dir() or not cwd.is_dir() else cwd


def _vocab_dir(vocab_dir: Optional[PathLike]) -> pathlib.Path:
    return pathlib.Path(vocab_dir) if vocab_dir is not None else default_vocab_dir()


def available_vocabs(vocab_dir: Optional[PathLike] = None) -> List[str]:
    """Names accepted by ``vocab=`` (the ``X`` of ``ggml-vocab-X.gguf`` files), sorted."""
    d = _vocab_dir(vocab_dir)
    if not d.is_dir():
        return []
    return sorted(p.name[len("ggml-vocab-"):-len(".gguf")] for p in d.glob("ggml-vocab-*.gguf"))


def vocab_path(vocab: PathLike, vocab_dir: Optional[PathLike] = None) -> pathlib.Path:
    """Path of the vocab file ``{vocab_dir}/ggml-vocab-{vocab}.gguf``.

    ``vocab_dir`` defaults to ``$PYLLAMA_VOCAB_DIR``, then to
    ``vendor/llama.cpp/models`` of the source tree.  ``vocab`` may also be the
    path of any ``.gguf`` file that holds ``tokenizer.*`` metadata.
    Raises FileNotFoundError (listing what is available) if there is no such file.
    """
    s = os.fspath(vocab)
    if s.endswith(".gguf") or os.sep in s or (os.altsep and os.altsep in s):
        p = pathlib.Path(s)
        if not p.is_file():
            raise FileNotFoundError(f"vocab file not found: {p}")
        return p
    d = _vocab_dir(vocab_dir)
    p = d / f"ggml-vocab-{s}.gguf"
    if not p.is_file():
        names = available_vocabs(d)
        hint = (
            f"available: {', '.join(names)}"
            if names
            else f"no ggml-vocab-*.gguf files there; pass vocab_dir= or set {VOCAB_DIR_ENV} "
            "to a llama.cpp checkout's models/ directory"
        )
        raise FileNotFoundError(f"vocab {s!r} not found: {p} does not exist ({hint})")
    return p


# (key, value, type, array item type); values as GGUFWriter.add_key_value takes them
_KV = Tuple[str, Any, gguf.GGUFValueType, Optional[gguf.GGUFValueType]]


def _read_tokenizer_kv_reader(path: str) -> List[_KV]:
    """``tokenizer.*`` key-values via gguf.GGUFReader (reference implementation; slow on big
    vocabs: ~9 s for llama-bpe, as it builds one numpy view per array item)."""
    reader = gguf.GGUFReader(path, "r")
    T = gguf.GGUFValueType
    out: List[_KV] = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == T.ARRAY:
            if len(field.types) != 2:
                raise NotImplementedError(f"{path}: nested array {key!r} is not supported")
            sub = field.types[1]
            if sub == T.STRING:
                # keep the raw bytes: no decode/encode round trip
                value: Any = [bytes(field.parts[i]) for i in field.data]
            elif len(field.data) == 0:
                value = []
            else:
                value = np.concatenate([field.parts[i] for i in field.data]).tolist()
            out.append((key, value, vtype, sub))
        elif vtype == T.STRING:
            out.append((key, bytes(field.parts[field.data[0]]), vtype, None))
        else:
            out.append((key, field.parts[field.data[0]][0].item(), vtype, None))
    return out


_T = gguf.GGUFValueType
_SCALAR_DTYPES = {
    _T.UINT8: "<u1", _T.INT8: "<i1", _T.UINT16: "<u2", _T.INT16: "<i2", _T.UINT32: "<u4",
    _T.INT32: "<i4", _T.FLOAT32: "<f4", _T.UINT64: "<u8", _T.INT64: "<i8", _T.FLOAT64: "<f8",
    _T.BOOL: "?",
}


def _read_tokenizer_kv_fast(path: str) -> Optional[List[_KV]]:
    """The same as :func:`_read_tokenizer_kv_reader`, parsing the GGUF v2/v3 little-endian
    header directly (~0.3 s for llama-bpe).  Returns None for files it does not handle."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 24 or buf[:4] != b"GGUF":
        return None
    version, _n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        return None
    unpack_u64 = struct.Struct("<Q").unpack_from
    unpack_u32 = struct.Struct("<I").unpack_from
    pos = 24

    def read_str() -> bytes:
        nonlocal pos
        (n,) = unpack_u64(buf, pos)
        s = buf[pos + 8: pos + 8 + n]
        pos += 8 + n
        return s

    out: List[_KV] = []
    for _ in range(n_kv):
        key = read_str().decode("utf-8")
        (vtype_i,) = unpack_u32(buf, pos)
        pos += 4
        vtype = _T(vtype_i)
        sub: Optional[gguf.GGUFValueType] = None
        if vtype == _T.STRING:
            value: Any = read_str()
        elif vtype == _T.ARRAY:
            sub_i, n = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            sub = _T(sub_i)
            if sub == _T.STRING:
                value = [read_str() for _ in range(n)]
            elif sub in _SCALAR_DTYPES:
                dt = np.dtype(_SCALAR_DTYPES[sub])
                value = np.frombuffer(buf, dtype=dt, count=n, offset=pos).tolist()
                pos += n * dt.itemsize
            else:
                return None  # nested arrays: let GGUFReader deal with (and reject) them
        else:
            dt = np.dtype(_SCALAR_DTYPES[vtype])
            value = np.frombuffer(buf, dtype=dt, count=1, offset=pos)[0].item()
            pos += dt.itemsize
        if key.startswith("tokenizer."):
            out.append((key, value, vtype, sub))
    return out


@functools.lru_cache(maxsize=16)
def _read_vocab_cached(path: str, mtime_ns: int, size: int) -> Tuple[_KV, ...]:
    try:
        kvs = _read_tokenizer_kv_fast(path)
    except (ValueError, IndexError, KeyError, struct.error):  # malformed: let GGUFReader report it
        kvs = None
    if kvs is None:
        kvs = _read_tokenizer_kv_reader(path)
    # GGUFWriter cannot write empty arrays; llama.cpp treats those keys as absent anyway
    kvs = [kv for kv in kvs if not (kv[2] == gguf.GGUFValueType.ARRAY and len(kv[1]) == 0)]
    if not any(k == gguf.Keys.Tokenizer.LIST for k, *_ in kvs):
        raise ValueError(f"{path} has no {gguf.Keys.Tokenizer.LIST} array: not a vocab file")
    return tuple(kvs)


def read_vocab(vocab: PathLike = "llama-spm", vocab_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """The ``tokenizer.*`` metadata of a vocab as a dict (strings decoded, arrays as lists).

    Handy in tests, e.g. ``read_vocab("qwen2")["tokenizer.ggml.eos_token_id"]`` or
    ``len(read_vocab("llama-bpe")["tokenizer.ggml.tokens"])`` for ``n_vocab``.
    """
    p = vocab_path(vocab, vocab_dir)
    st = p.stat()
    kvs = _read_vocab_cached(str(p.resolve()), st.st_mtime_ns, st.st_size)

    def dec(v: Any) -> Any:
        return v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v

    return {k: ([dec(x) for x in v] if isinstance(v, list) else dec(v)) for k, v, _t, _s in kvs}


# --------------------------------------------------------------------------------------
# model


def _resolve_shape(n_embd: int, n_layer: int, n_head: int, n_head_kv: Optional[int],
                   n_ff: Optional[int], n_ctx_train: int, qtype: gguf.GGMLQuantizationType) -> Tuple[int, int, int]:
    for name, v in (("n_embd", n_embd), ("n_layer", n_layer), ("n_head", n_head), ("n_ctx_train", n_ctx_train)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n_head_kv is None:
        n_head_kv = n_head
    if n_ff is None:
        n_ff = 4 * n_embd
    if n_head_kv <= 0 or n_ff <= 0:
        raise ValueError(f"n_head_kv and n_ff must be positive, got {n_head_kv!r}, {n_ff!r}")
    if n_embd % n_head:
        raise ValueError(f"n_embd ({n_embd}) must be a multiple of n_head ({n_head})")
    head_dim = n_embd // n_head
    if head_dim % 2:
        raise ValueError(f"head dimension n_embd/n_head = {head_dim} must be even (RoPE rotates pairs)")
    if n_head % n_head_kv:
        raise ValueError(f"n_head ({n_head}) must be a multiple of n_head_kv ({n_head_kv})")
    if n_layer > 512:  # LLAMA_MAX_LAYERS
        raise ValueError(f"n_layer ({n_layer}) exceeds llama.cpp's maximum of 512")
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if block > 1:
        for dim, v in (("n_embd", n_embd), ("n_ff", n_ff)):
            if v % block:
                raise ValueError(
                    f"ftype {qtype.name.lower()} quantizes rows in blocks of {block}: "
                    f"{dim} ({v}) must be a multiple of {block}"
                )
    return int(n_head_kv), int(n_ff), head_dim


def _tensor_plan(n_vocab: int, n_embd: int, n_layer: int, n_head_kv: int, head_dim: int,
                 n_ff: int) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, numpy shape) in file order.  numpy shape is GGUF ``ne`` reversed:
    e.g. token_embd (n_vocab, n_embd) is ``ne = [n_embd, n_vocab]``."""
    MT = gguf.MODEL_TENSOR
    arch = gguf.MODEL_ARCH.LLAMA
    known = set(gguf.MODEL_TENSORS[arch])

    def tn(t: "gguf.MODEL_TENSOR", bid: Optional[int] = None) -> str:
        assert t in known, t
        name = gguf.TENSOR_NAMES[t]
        return (name.format(bid=bid) if bid is not None else name) + ".weight"

    n_embd_kv = n_head_kv * head_dim
    plan: List[Tuple[str, Tuple[int, ...]]] = [(tn(MT.TOKEN_EMBD), (n_vocab, n_embd))]
    for i in range(n_layer):
        plan += [
            (tn(MT.ATTN_NORM, i), (n_embd,)),
            (tn(MT.ATTN_Q, i), (n_embd, n_embd)),
            (tn(MT.ATTN_K, i), (n_embd_kv, n_embd)),
            (tn(MT.ATTN_V, i), (n_embd_kv, n_embd)),
            (tn(MT.ATTN_OUT, i), (n_embd, n_embd)),
            (tn(MT.FFN_NORM, i), (n_embd,)),
            (tn(MT.FFN_GATE, i), (n_ff, n_embd)),
            (tn(MT.FFN_UP, i), (n_ff, n_embd)),
            (tn(MT.FFN_DOWN, i), (n_embd, n_ff)),
        ]
    plan += [(tn(MT.OUTPUT_NORM), (n_embd,)), (tn(MT.OUTPUT), (n_vocab, n_embd))]
    return plan


def count_params(*, n_vocab: int = 32000, n_embd: int = 64, n_layer: int = 2, n_head: int = 4,
                 n_head_kv: Optional[int] = None, n_ff: Optional[int] = None, **_ignored: Any) -> int:
    """Number of weights :func:`write_random_model` writes for this shape
    (``count_params(**PRESETS["1b"])`` -> 1100048384)."""
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    n_ff = 4 * n_embd if n_ff is None else n_ff
    plan = _tensor_plan(n_vocab, n_embd, n_layer, n_head_kv, n_embd // n_head, n_ff)
    return sum(math.prod(shape) for _, shape in plan)


def _nbytes(shape: Tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def _tensor_seed(seed: int, name: str) -> List[int]:
    # one independent, order-free stream per tensor: a tensor's values depend only on
    # (seed, name, shape), so e.g. changing n_layer leaves token_embd unchanged
    return [int(seed), zlib.crc32(name.encode("utf-8"))]


def _make_tensor(name: str, shape: Tuple[int, ...], qtype: gguf.GGMLQuantizationType,
                 seed: int) -> np.ndarray:
    if len(shape) == 1:  # norm weights
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng(_tensor_seed(seed, name))
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(WEIGHT_STD)
    if qtype == gguf.GGMLQuantizationType.F32:
        return w
    if qtype == gguf.GGMLQuantizationType.F16:
        return w.astype(np.float16)
    # returns uint8 of shape (*shape[:-1], shape[-1] // block * type_size)
    return _gguf_quants.quantize(w, qtype)


def write_random_model(
    path: PathLike,
    *,
    vocab: PathLike = "llama-spm",
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: Optional[int] = None,
    n_ff: Optional[int] = None,
    n_ctx_train: int = 2048,
    ftype: str = "f32",
    seed: int = 0,
    chat_template: Optional[str] = None,
    arch: str = "llama",
    name: str = "pyllama-test",
    rope_theta: float = 10000.0,
    rms_eps: float = 1e-5,
    vocab_dir: Optional[PathLike] = None,
) -> pathlib.Path:
    """Write a LLaMA-architecture GGUF with random weights and a real vocab; return its path.

    - ``vocab``: name of ``ggml-vocab-{vocab}.gguf`` (see :func:`vocab_path`,
      :func:`available_vocabs`) or a path to a .gguf file; every ``tokenizer.*``
      key is copied with its GGUF type, so ``n_vocab`` is the vocab's token count.
    - ``n_head_kv`` defaults to ``n_head``; ``n_ff`` to ``4 * n_embd``.
    - ``ftype``: "f32", "f16", "q8_0" or "q4_0" for the 2-D weight matrices
      (token_embd and output included); norm weights are always f32.  Quantized
      types need ``n_embd`` and ``n_ff`` to be multiples of 32.
    - ``chat_template``: None keeps the vocab's ``tokenizer.chat_template`` (if
      any); a string replaces it; "" removes it (the model then has no template).
    - weights ~ N(0, 0.02) from ``numpy.random.default_rng`` seeded by
      ``(seed, tensor name)``; norms are 1.0.  Same arguments -> identical bytes.

    The file is written to a temporary name next to ``path`` and renamed into
    place, so an interrupted run never leaves a truncated model behind.
    """
    if arch not in _SUPPORTED_ARCHS:
        raise ValueError(f"arch {arch!r} is not supported (supported: {', '.join(_SUPPORTED_ARCHS)})")
    key = str(ftype).lower()
    if key not in FTYPES:
        raise ValueError(f"ftype {ftype!r} is not supported (choose from {', '.join(FTYPES)})")
    qtype, file_type = FTYPES[key]
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if chat_template is not None and not isinstance(chat_template, str):
        raise TypeError(f"chat_template must be a str or None, got {type(chat_template).__name__}")
    n_head_kv, n_ff, head_dim = _resolve_shape(n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx_train, qtype)

    vpath = vocab_path(vocab, vocab_dir)
    st = vpath.stat()
    tok_kv = _read_vocab_cached(str(vpath.resolve()), st.st_mtime_ns, st.st_size)
    n_vocab = next(len(v) for k, v, _t, _s in tok_kv if k == gguf.Keys.Tokenizer.LIST)

    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    arch_name = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(tmp, arch_name)  # also writes general.architecture
    try:
        writer.add_name(name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_vocab_size(n_vocab)
        writer.add_context_length(n_ctx_train)
        writer.add_embedding_length(n_embd)
        writer.add_block_count(n_layer)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_dimension_count(head_dim)
        writer.add_layer_norm_rms_eps(float(rms_eps))
        writer.add_rope_freq_base(float(rope_theta))

        tmpl_key = gguf.Keys.Tokenizer.CHAT_TEMPLATE
        for k, v, t, sub in tok_kv:
            if k == tmpl_key and chat_template is not None:
                continue
            writer.add_key_value(k, v, t, sub)
        if chat_template:  # None: kept above; "": dropped
            writer.add_key_value(tmpl_key, chat_template, gguf.GGUFValueType.STRING)

        plan = _tensor_plan(n_vocab, n_embd, n_layer, n_head_kv, head_dim, n_ff)
        types = [gguf.GGMLQuantizationType.F32 if len(s) == 1 else qtype for _, s in plan]
        for (tname, shape), t in zip(plan, types):
            writer.add_tensor_info(tname, shape, np.dtype(np.float32), _nbytes(shape, t), raw_dtype=t)

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # stream: generate, convert, write and free one tensor at a time
        for (tname, shape), t in zip(plan, types):
            writer.write_tensor_data(_make_tensor(tname, shape, t, int(seed)))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return path


# --------------------------------------------------------------------------------------
# command line



def write_random_lora(path: PathLike, *, n_embd: int = 64, n_layer: int = 2, rank: int = 4, seed: int = 0,
                      std: float = 0.5, arch: str = "llama", targets: Sequence[str] = ("attn_q", "attn_v")
                      ) -> pathlib.Path:
    """A LoRA adapter GGUF (llama.cpp's adapter format) for ``targets`` of every layer of a model
    written by :func:`write_random_model` with the same ``n_embd``/``n_layer`` (square projections)."""
    rng = np.random.default_rng(seed)
    path = pathlib.Path(path)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(rank))
    for il in range(n_layer):
        for t in targets:
            # ggml shapes: a = [n_in, rank], b = [rank, n_out] (numpy shapes are reversed)
            w.add_tensor(f"blk.{il}.{t}.weight.lora_a", rng.normal(0, std, (rank, n_embd)).astype(np.float32))
            w.add_tensor(f"blk.{il}.{t}.weight.lora_b", rng.normal(0, std, (n_embd, rank)).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pyllama.testing",
        description="Write a LLaMA GGUF model with seeded random weights and a real llama.cpp vocab.",
    )
    p.add_argument("out", nargs="?", help="output .gguf path")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model shape (default: tiny)")
    p.add_argument("--ftype", choices=list(FTYPES), default="f32")
    p.add_argument("--vocab", default="llama-spm", help="ggml-vocab-NAME.gguf name or a .gguf path (default: llama-spm)")
    p.add_argument("--vocab-dir", default=None, help=f"directory of ggml-vocab-*.gguf (default: ${VOCAB_DIR_ENV} or vendor/llama.cpp/models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="pyllama-test")
    for opt in ("n-embd", "n-layer", "n-head", "n-head-kv", "n-ff", "n-ctx-train"):
        p.add_argument(f"--{opt}", type=int, default=None, help="override the preset")
    p.add_argument("--rope-theta", type=float, default=None)
    p.add_argument("--rms-eps", type=float, default=None)
    tg = p.add_mutually_exclusive_group()
    tg.add_argument("--chat-template", default=None, help="chat template string (default: the vocab's, if any)")
    tg.add_argument("--chat-template-file", default=None, help="read the chat template from this file")
    tg.add_argument("--no-chat-template", action="store_true", help="write no chat template")
    p.add_argument("--list-vocabs", action="store_true", help="print the available vocab names and exit")
    p.add_argument("-q", "--quiet", action="store_true")
    args = p.parse_args(argv)

    if args.list_vocabs:
        for v in available_vocabs(args.vocab_dir):
            print(v)
        return 0
    if not args.out:
        p.error("the output path is required")

    kw: Dict[str, Any] = dict(PRESETS[args.preset])
    for opt in ("n_embd", "n_layer", "n_head", "n_head_kv", "n_ff", "n_ctx_train"):
        if getattr(args, opt) is not None:
            kw[opt] = getattr(args, opt)
    if args.rope_theta is not None:
        kw["rope_theta"] = args.rope_theta
    if args.rms_eps is not None:
        kw["rms_eps"] = args.rms_eps
    if args.chat_template_file:
        kw["chat_template"] = pathlib.Path(args.chat_template_file).read_text(encoding="utf-8")
    elif args.no_chat_template:
        kw["chat_template"] = ""
    elif args.chat_template is not None:
        kw["chat_template"] = args.chat_template

    t0 = time.perf_counter()
    try:
        out = write_random_model(args.out, vocab=args.vocab, vocab_dir=args.vocab_dir, ftype=args.ftype,
                                 seed=args.seed, name=args.name, **kw)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        n_vocab = len(read_vocab(args.vocab, args.vocab_dir)["tokenizer.ggml.tokens"])
        n = count_params(n_vocab=n_vocab, **kw)
        size = out.stat().st_size
        print(f"{out}: {n / 1e6:.1f}M params, {args.ftype}, vocab {args.vocab} (n_vocab={n_vocab}), "
              f"{size / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
