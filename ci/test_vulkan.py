"""Check a Vulkan build of pyllama against the CPU backend of the same build.

    bash ci/build_vulkan.sh                       # builds .venv-vulkan
    .venv-vulkan/bin/python ci/test_vulkan.py     # this check (not part of the pytest suite)

For a small random-weights model (f32, then Q8_0) it

1. lists the devices and requires a Vulkan device of type gpu (on a machine without a GPU that
   is Mesa's software driver, lavapipe: "llvmpipe (LLVM ...)");
2. loads the model with every layer offloaded (n_gpu_layers=-1) and checks in llama.cpp's log
   that the layers went to the Vulkan device;
3. generates 32 tokens greedily through ``pyllama.Llama`` and through the core API;
4. does the same on the CPU backend only (``ModelParams(n_gpu_layers=0, devices=())``: no GPU
   device in the model, so the scheduler has no Vulkan backend to offload ops to) and compares
   the tokens, the first-step logits, and the logits of every position with both backends fed
   the same tokens (teacher forcing).

Exit status: 1 if the Vulkan device is missing, a load or generation fails, layers were not
offloaded, or the logits differ wildly (relative max abs diff > 0.1, a real bug); a token
mismatch on its own is reported, not a failure: greedy decoding of a random-weights model
flips on tiny floating-point differences between the backends.

What those differences are, measured with lavapipe (Mesa 22.3): for the f32 model, Vulkan's f16
arithmetic (the device reports fp16) and the f16 KV cache / flash-attention paths, which the two
backends round differently: with GGML_VK_DISABLE_F16=1, flash_attn="off" and an f32 KV cache the
logits agree to ~3e-5 instead of ~1.5e-3. For Q8_0 (~1.5e-2 relative, whatever those settings),
most likely the CPU quantizing the activations to Q8_0 for its integer dot products, which
Vulkan does not do on a device without integer dot product support (it multiplies dequantized
weights with float activations).

ggml's Vulkan backend skips devices of type CPU (lavapipe reports itself as one) unless they are
listed in GGML_VK_VISIBLE_DEVICES, so this script sets GGML_VK_VISIBLE_DEVICES=0 when the
variable is unset (set it yourself to pick another device).
"""
from __future__ import annotations

import logging
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")    # before the backends are initialised
ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("PYLLAMA_VOCAB_DIR", str(ROOT / "vendor" / "llama.cpp" / "models"))

import numpy as np  # noqa: E402

import pyllama  # noqa: E402
from pyllama.testing import write_random_model  # noqa: E402

N_GEN = 32
PROMPT = "Once upon a time, in a small village by the sea, there lived"
MODEL_SHAPE = dict(vocab="llama-spm", n_embd=256, n_layer=4, n_head=4, n_ff=1024, seed=0)
WILD = 1e-1   # relative logits difference above which we call it a bug


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


LOG = _Capture()
logging.getLogger("pyllama.llama_cpp").addHandler(LOG)
logging.getLogger("pyllama.llama_cpp").setLevel(logging.INFO)
logging.getLogger("pyllama.llama_cpp").propagate = False

failures = []


def fail(msg):
    print("FAIL:", msg)
    failures.append(msg)


def greedy_core(model, prompt_toks, n_gen):
    """Greedy generation with the core API: (generated tokens, logits of each step, seconds)."""
    ctx = pyllama.Context(model, pyllama.ContextParams(n_ctx=256, n_batch=256, n_ubatch=256))
    b = pyllama.Batch(256)
    b.add_sequence(prompt_toks, 0, 0)
    t0 = time.perf_counter()
    ctx.decode(b)
    out, step_logits = [], []
    pos = len(prompt_toks)
    for _ in range(n_gen):
        lg = ctx.logits(-1, copy=True)
        step_logits.append(lg)
        tok = int(np.argmax(lg))
        out.append(tok)
        b.clear()
        b.add(tok, pos, 0, True)
        pos += 1
        ctx.decode(b)
    secs = time.perf_counter() - t0
    ctx.close()
    return out, step_logits, secs


def forced_logits(model, toks):
    """Logits of every position for a fixed token sequence, in one batch."""
    ctx = pyllama.Context(model, pyllama.ContextParams(n_ctx=256, n_batch=256, n_ubatch=256))
    b = pyllama.Batch(256)
    for i, t in enumerate(toks):
        b.add(t, i, 0, True)
    ctx.decode(b)
    rows = np.stack([ctx.logits(i, copy=True) for i in range(len(toks))])
    ctx.close()
    return rows


def load(path, params, label):
    LOG.lines.clear()
    t0 = time.perf_counter()
    m = pyllama.Model(path, params)
    lines = [ln for ln in LOG.lines if "offload" in ln or "model buffer size" in ln]
    print(f"  [{label}] loaded in {time.perf_counter() - t0:.2f}s; llama.cpp says:")
    for ln in lines:
        print("     ", ln.strip())
    return m, lines


def check_model(path, ftype, vk_name):
    print(f"\n=== {ftype} model: {path.name} ({path.stat().st_size / 2**20:.1f} MiB)")
    # --- Vulkan, all layers offloaded
    vk_model, lines = load(path, pyllama.ModelParams(n_gpu_layers=-1), "Vulkan, n_gpu_layers=-1")
    joined = "\n".join(lines)
    n_layer = MODEL_SHAPE["n_layer"]
    if f"offloaded {n_layer + 1}/{n_layer + 1} layers to GPU" not in joined:
        fail(f"{ftype}: expected 'offloaded {n_layer + 1}/{n_layer + 1} layers to GPU' in the log")
    if f"{vk_name} model buffer size" not in joined:
        fail(f"{ftype}: no '{vk_name} model buffer size' line: the weights are not on {vk_name}")
    prompt = vk_model.vocab.tokenize(PROMPT)
    vk_toks, vk_steps, vk_secs = greedy_core(vk_model, prompt, N_GEN)
    # --- CPU only: no GPU device in the model at all
    cpu_model, lines = load(path, pyllama.ModelParams(n_gpu_layers=0, devices=()), "CPU, devices=()")
    if any(vk_name in ln for ln in lines):
        fail(f"{ftype}: the CPU reference put something on {vk_name}")
    cpu_toks, cpu_steps, cpu_secs = greedy_core(cpu_model, prompt, N_GEN)
    print(f"  greedy {N_GEN} tokens (core API): Vulkan {vk_secs:.2f}s, CPU {cpu_secs:.2f}s")

    # --- the same through pyllama.Llama (the engine the server uses), on Vulkan
    with pyllama.Llama(path, n_gpu_layers=-1, n_ctx=256, seed=0) as llm:
        r = llm(PROMPT, max_tokens=N_GEN, temperature=0, ignore_eos=True)
    llama_text = r["choices"][0]["text"]
    if r["usage"]["completion_tokens"] != N_GEN:
        fail(f"{ftype}: Llama generated {r['usage']['completion_tokens']} tokens, not {N_GEN}")
    core_text = vk_model.vocab.detokenize(vk_toks) if hasattr(vk_model.vocab, "detokenize") else None
    print(f"  Llama(n_gpu_layers=-1) text: {llama_text[:70]!r}...")
    if core_text is not None:
        print(f"  Llama text == core-API Vulkan text: {llama_text == core_text}")

    # --- compare
    same = vk_toks == cpu_toks
    first_div = next((i for i, (a, b) in enumerate(zip(vk_toks, cpu_toks)) if a != b), None)
    d0 = np.abs(vk_steps[0] - cpu_steps[0])
    scale0 = float(np.abs(cpu_steps[0]).max())
    print(f"  tokens equal: {same}" + ("" if same else
          f" (first difference at step {first_div}: Vulkan {vk_toks[first_div]} vs CPU {cpu_toks[first_div]}; "
          f"{sum(a == b for a, b in zip(vk_toks, cpu_toks))}/{N_GEN} positions agree)"))
    print(f"  first-step logits: max abs diff {d0.max():.3e} (max |logit| {scale0:.3f}, "
          f"relative {d0.max() / scale0:.3e}), mean abs diff {d0.mean():.3e}")
    if not same:
        lg = cpu_steps[first_div]
        top2 = np.sort(lg)[-2:]
        dstep = np.abs(vk_steps[first_div] - lg).max()
        print(f"  at the first differing step the CPU's top-2 logits are {top2[1] - top2[0]:.3e} apart, "
              f"the backends' logits up to {dstep:.3e}: {'a near tie flipped by rounding' if top2[1] - top2[0] <= 2 * dstep else 'NOT a near tie'}")
    # teacher forcing: both backends see exactly the CPU's sequence
    seq = list(prompt) + cpu_toks
    fv, fc = forced_logits(vk_model, seq), forced_logits(cpu_model, seq)
    dall = np.abs(fv - fc)
    rel = float(dall.max() / np.abs(fc).max())
    argmax_agree = float(np.mean(fv.argmax(1) == fc.argmax(1)))
    print(f"  teacher-forced, {len(seq)} positions in one batch: max abs diff {dall.max():.3e} "
          f"(relative {rel:.3e}), argmax agrees at {argmax_agree:.0%} of positions")
    if not np.isfinite(fv).all():
        fail(f"{ftype}: non-finite logits on Vulkan")
    if max(rel, float(d0.max() / scale0)) > WILD:
        fail(f"{ftype}: logits differ by more than {WILD:.0%} relative: a real bug, not rounding")
    for m in (vk_model, cpu_model):
        m.close()
    return dict(ftype=ftype, tokens_equal=same, first_div=first_div, first_step_max_abs=float(d0.max()),
                forced_max_abs=float(dall.max()), forced_rel=rel)


def main():
    print("pyllama", pyllama.__version__, "from", pyllama.__file__)
    print("backends:", pyllama.list_backends())
    print("GGML_VK_VISIBLE_DEVICES =", os.environ.get("GGML_VK_VISIBLE_DEVICES"))
    devices = pyllama.list_devices()
    for d in devices:
        print(f"  device {d['name']}: {d['description']} (type {d['type']}, backend {d['backend']}, "
              f"{d['memory_total'] / 2**30:.1f} GiB)")
    vk = [d for d in devices if d["backend"].lower() == "vulkan" and d["type"] in ("gpu", "igpu")]
    if not vk:
        print("FAIL: no Vulkan device of type gpu (is this a Vulkan build? does `vulkaninfo --summary` list a "
              "device? lavapipe needs GGML_VK_VISIBLE_DEVICES=0)")
        return 1
    vk_name = vk[0]["name"]
    print("using", vk_name, "=", vk[0]["description"])
    results = []
    with tempfile.TemporaryDirectory(prefix="pyllama-vulkan-") as tmp:
        for ftype in ("f32", "q8_0"):
            path = write_random_model(pathlib.Path(tmp) / f"rand-{ftype}.gguf", ftype=ftype, **MODEL_SHAPE)
            try:
                results.append(check_model(path, ftype, vk_name))
            except Exception as e:  # a load or generation failure is a failure
                fail(f"{ftype}: {type(e).__name__}: {e}")
    print("\nsummary:")
    for r in results:
        print(f"  {r['ftype']}: tokens equal {r['tokens_equal']}"
              + ("" if r["tokens_equal"] else f" (diverge at step {r['first_div']})")
              + f", first-step logits max abs diff {r['first_step_max_abs']:.2e}, "
              f"teacher-forced max abs diff {r['forced_max_abs']:.2e} (relative {r['forced_rel']:.1e})")
    if failures:
        print(f"{len(failures)} failure(s)")
        return 1
    print("vulkan check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
