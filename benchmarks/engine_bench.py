#!/usr/bin/env python3
"""Engine throughput: pyllama's EngineCore (via ``Llama.generate_batch``) vs ``llama-batched-bench``.

Both run the same GGUF file (a generated 125M-parameter LLaMA with random weights, Q8_0,
llama-spm vocab), the same threads, batch sizes, context size, prompt length and number
of decode steps.  For each parallelism P, both do: one prefill of P prompts of PP tokens,
then N_GEN decode steps of P tokens each (one token per sequence).  The figure compared
is the aggregate generation (TG) throughput over the decode steps only:

* llama-batched-bench: ``S_TG t/s`` = P * N_GEN / T_TG, T_TG = the wall time of its N_GEN
  ``llama_decode`` calls of P random tokens (no sampling, no detokenization).
* pyllama: ``llm.generate_batch(P distinct prompts, max_tokens=N_GEN + 1, temperature=0,
  ignore_eos=True)``.  The first token of each request comes out of the prefill step; the
  remaining N_GEN come out of N_GEN decode steps at the same KV positions as
  batched-bench's (PP .. PP+N_GEN-1).  TG t/s = P * N_GEN / T_TG with
  T_TG = max over the requests of ``timings["predicted_ms"]`` (from the moment the first
  token is sampled, right after the prefill decode, to the last sampled token), i.e. the
  wall time of the N_GEN decode steps *including* everything the engine does in them:
  scheduling, building the batch, llama_decode, sampling, detokenization, stop
  handling, output objects.

Also reported for pyllama: the Python time per step (``python_ms_per_step`` of
``llm._core.metrics_dict()``, i.e. step() time outside llama_decode, which includes the
C++ sampler calls), computed over the measured call only (metric deltas), and the time
inside llama_decode per TG step (the runner's decode is wrapped with a timer), so the
gap to batched-bench splits into "decode itself" and "engine overhead".

Runs are interleaved (for each P and repetition: pyllama, then batched-bench, order
alternating per repetition) so that background load hits both alike.

    python benchmarks/engine_bench.py --quick        # N_GEN=32, P=1,4,8, 1 repetition
    python benchmarks/engine_bench.py                # N_GEN=128, P=1,4,8, best of 3
    python benchmarks/engine_bench.py --profile      # + cProfile of one pyllama run at the largest P

Needs ``benchmarks/build_llama_tools.sh`` to have been run (or ``--batched-bench PATH``).
Results: ``benchmarks/results/engine_bench-<timestamp>.{json,md}`` (+ ``engine_bench-latest.*``).
"""
from __future__ import annotations

import argparse
import cProfile
import datetime as _dt
import io
import json
import os
import platform
import pstats
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / ".build"
MODELS = BUILD / "models"
RESULTS = HERE / "results"
DEFAULT_BB = BUILD / "llama.cpp" / "bin" / "llama-batched-bench"

MODEL_ARGS = ["--preset", "125m", "--ftype", "q8_0", "--vocab", "llama-spm", "--seed", "0"]
MODEL_NAME = "random-125m-q8_0-llama-spm-s0.gguf"


# ---------------------------------------------------------------------------------------------
# setup


def ensure_model(path: Optional[str]) -> Path:
    """The benchmark model: the given path, or the cached generated one (created on first use)."""
    if path:
        p = Path(path)
        if not p.is_file():
            raise SystemExit(f"engine_bench: model not found: {p}")
        return p
    p = MODELS / MODEL_NAME
    if not p.is_file():
        MODELS.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pyllama.testing", str(p), *MODEL_ARGS]
        print("engine_bench: generating the model:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)   # writes to a temporary file, then renames
    return p


def find_batched_bench(path: Optional[str]) -> Path:
    p = Path(path) if path else DEFAULT_BB
    if not p.is_file() or not os.access(p, os.X_OK):
        raise SystemExit(f"engine_bench: {p} not found; build it with benchmarks/build_llama_tools.sh "
                         "(or pass --batched-bench PATH)")
    return p


def ctx_size(P: int, pp: int, n_gen: int) -> int:
    """One context size for both sides: P sequences of pp + n_gen (+1) tokens, rounded up to 256."""
    need = P * (pp + n_gen + 1)
    return max(256, (need + 255) // 256 * 256)


def machine_info() -> Dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: Dict[str, Any] = {"cpu": cpu, "n_cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


# ---------------------------------------------------------------------------------------------
# llama-batched-bench


def run_batched_bench(bb: Path, model: Path, P: int, pp: int, n_gen: int, threads: int,
                      n_batch: int, n_ubatch: int) -> Dict[str, Any]:
    ctx = ctx_size(P, pp, n_gen)
    cmd = [str(bb), "-m", str(model), "-c", str(ctx), "-b", str(n_batch), "-ub", str(n_ubatch),
           "-npp", str(pp), "-ntg", str(n_gen), "-npl", str(P), "-t", str(threads),
           "-kvu",                      # unified KV cache, as pyllama's Llama uses
           "--output-format", "jsonl"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"llama-batched-bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = []
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():
        line = line.strip()
        if line.startswith("{") and '"speed_tg"' in line:
            rows.append(json.loads(line))
    if len(rows) != 1:
        raise RuntimeError(f"expected one jsonl row from llama-batched-bench, got {len(rows)}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    r = rows[0]
    return {"tg_tps": r["speed_tg"], "t_tg_s": r["t_tg"], "ms_per_step": 1e3 * r["t_tg"] / n_gen,
            "pp_tps": r["speed_pp"], "t_pp_s": r["t_pp"], "n_ctx": ctx, "wall_s": wall,
            "flash_attn": r.get("flash_attn"), "cmd": " ".join(cmd[:1] + ["..."] + cmd[3:]), "raw": r}


# ---------------------------------------------------------------------------------------------
# pyllama


class TimedDecode:
    """Wraps the runner's decode to time each llama_decode (and count its tokens)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.inner = runner.decode
        self.calls: List[tuple] = []       # (n_tokens, seconds)
        runner.decode = self

    def __call__(self, items: Sequence[Any]) -> List[int]:
        n = sum(len(it.tokens) for it in items)
        t0 = time.perf_counter()
        rows = self.inner(items)
        self.calls.append((n, time.perf_counter() - t0))
        return rows

    def uninstall(self) -> None:
        self.runner.decode = self.inner


class TimedSample:
    """Wraps the runner's sample (the C++ sampler chain over the whole vocab) to time it."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.inner = runner.sample
        self.n = 0
        self.seconds = 0.0
        runner.sample = self

    def __call__(self, sampler: Any, row: int) -> int:
        t0 = time.perf_counter()
        tok = self.inner(sampler, row)
        self.seconds += time.perf_counter() - t0
        self.n += 1
        return tok

    def uninstall(self) -> None:
        self.runner.sample = self.inner


def make_prompts(P: int, pp: int, n_vocab: int, bos: Optional[int], seed: int) -> List[List[int]]:
    """P distinct prompts of exactly pp token ids (BOS + random ids), like batched-bench's random tokens."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(P):
        body = [rng.randrange(3, n_vocab) for _ in range(pp - (1 if bos is not None else 0))]
        prompts.append(([bos] if bos is not None else []) + body)
    return prompts


def run_pyllama(llm: Any, P: int, pp: int, n_gen: int, seed: int,
                profile: Optional[cProfile.Profile] = None) -> Dict[str, Any]:
    core = llm._core
    llm.reset()                                   # no prefix reuse from an earlier run
    prompts = make_prompts(P, pp, llm.n_vocab(), llm.token_bos(), seed)
    m0 = dict(core.metrics_dict())
    timer = TimedDecode(core.runner)
    stimer = TimedSample(core.runner)
    try:
        t0 = time.perf_counter()
        if profile is not None:
            profile.enable()
        res = llm.generate_batch(prompts, max_tokens=n_gen + 1, temperature=0.0, ignore_eos=True)
        if profile is not None:
            profile.disable()
        wall = time.perf_counter() - t0
    finally:
        timer.uninstall()
        stimer.uninstall()
    m1 = core.metrics_dict()
    for r in res:
        u, t = r["usage"], r["timings"]
        if u["completion_tokens"] != n_gen + 1 or t["predicted_n"] != n_gen + 1 or t["prompt_n"] != pp:
            raise RuntimeError(f"unexpected request accounting: usage={u} timings={t}")
        if r["choices"][0]["finish_reason"] != "length":
            raise RuntimeError(f"unexpected finish: {r['choices'][0]}")
    t_tg = max(r["timings"]["predicted_ms"] for r in res) / 1e3
    n_steps = m1["n_decode_total"] - m0["n_decode_total"]
    py_s = m1["t_step_python_total"] - m0["t_step_python_total"]
    dec_s = m1["t_decode_total"] - m0["t_decode_total"]
    # decode calls of the TG phase: one token per sequence (the prefill call comes first)
    tg_calls = [c for c in timer.calls if c[0] == P][-n_gen:]
    if len(tg_calls) != n_gen or n_steps != n_gen + 1:
        raise RuntimeError(f"expected 1 prefill + {n_gen} decode steps, got {n_steps} steps, "
                           f"decode calls {[c[0] for c in timer.calls]}")
    t_tg_decode = sum(c[1] for c in tg_calls)
    return {
        "tg_tps": P * n_gen / t_tg,
        "t_tg_s": t_tg,
        "ms_per_step": 1e3 * t_tg / n_gen,
        "decode_ms_per_step": 1e3 * t_tg_decode / n_gen,           # runner.decode: batch fill + llama_decode
        "decode_only_tg_tps": P * n_gen / t_tg_decode,             # as if the engine cost nothing
        "python_ms_per_step": 1e3 * py_s / n_steps,                # metrics: step() outside decode
        "python_ms_per_step_cumulative": m1["python_ms_per_step"],  # metrics_dict() as is (incl. warm-up)
        "sample_ms_per_step": 1e3 * stimer.seconds / n_steps,          # part of python_ms_per_step
        "decode_ms_per_step_all": 1e3 * dec_s / n_steps,
        "n_steps": n_steps,
        "prompt_ms": max(r["timings"]["prompt_ms"] for r in res),
        "wall_s": wall,                                            # the whole generate_batch call
    }


def open_llama(model: Path, P: int, pp: int, n_gen: int, threads: int, n_batch: int, n_ubatch: int) -> Any:
    import pyllama
    return pyllama.Llama(str(model), n_ctx=ctx_size(P, pp, n_gen), n_batch=n_batch, n_ubatch=n_ubatch,
                         n_parallel=P, n_threads=threads, verbose=False)


# ---------------------------------------------------------------------------------------------
# reporting


def pick(runs: List[Dict[str, Any]], how: str) -> Dict[str, Any]:
    """The representative run: the fastest (best) or the median one (by TG t/s)."""
    ranked = sorted(runs, key=lambda r: r["tg_tps"])
    return ranked[-1] if how == "best" else ranked[(len(ranked) - 1) // 2]


def markdown(report: Dict[str, Any]) -> str:
    cfg, mach = report["config"], report["machine"]
    lines = [
        f"### Engine throughput: pyllama vs llama-batched-bench ({cfg['mode']} mode)",
        "",
        f"- date: {report['date']}",
        f"- machine: {mach.get('cpu')} ({mach.get('n_cpus')} cores), {mach.get('platform')}, "
        f"Python {mach.get('python')}; load average at start {tuple(round(x, 2) for x in mach.get('loadavg_start', ()))}"
        f", at end {tuple(round(x, 2) for x in mach.get('loadavg_end', ()))}",
        f"- command: `{report['command']}`",
        f"- model: `{cfg['model_desc']}` ({cfg['model_size_mib']:.0f} MiB)",
        f"- PP={cfg['pp']} prompt tokens per sequence, N_GEN={cfg['n_gen']} decode steps, threads={cfg['threads']}, "
        f"n_batch={cfg['n_batch']}, n_ubatch={cfg['n_ubatch']}, {cfg['reps']} repetition(s), "
        f"{cfg['aggregate']} of the repetitions",
        "- TG t/s = P x N_GEN / wall time of the N_GEN decode steps (prompt processing excluded; "
        "pyllama's includes its scheduling, sampling and detokenization; batched-bench's is bare llama_decode)",
        "",
        "| P | pyllama TG t/s | batched-bench TG t/s | ratio | pyllama ms/step | bench ms/step "
        "| pyllama decode ms/step | python ms/step | of which sampling |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['P']} | {r['pyllama_tg_tps']:.1f} | {r['bench_tg_tps']:.1f} | {r['ratio']:.3f} "
            f"| {r['pyllama_ms_per_step']:.2f} | {r['bench_ms_per_step']:.2f} "
            f"| {r['pyllama_decode_ms_per_step']:.2f} | {r['python_ms_per_step']:.3f} "
            f"| {r['sample_ms_per_step']:.3f} |")
    lines += [
        "",
        "pyllama decode ms/step: time in the runner's decode (filling the llama_batch + llama_decode) per TG "
        "step in pyllama's process; "
        "python ms/step: `python_ms_per_step` from `metrics_dict()` over the measured call "
        "(step() time outside llama_decode, averaged over the prefill step and the N_GEN decode steps); "
        "of which sampling: time in `runner.sample` (the C++ sampler chain over the 32000-token vocab).",
    ]
    return "\n".join(lines) + "\n"


def print_table(results: List[Dict[str, Any]]) -> None:
    hdr = (f"{'P':>3} {'pyllama TG t/s':>15} {'batched-bench TG t/s':>21} {'ratio':>7} "
           f"{'py ms/step':>11} {'bb ms/step':>11} {'py decode ms':>13} {'python ms/step':>15} {'(sampling)':>11}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['P']:>3} {r['pyllama_tg_tps']:>15.1f} {r['bench_tg_tps']:>21.1f} {r['ratio']:>7.3f} "
              f"{r['pyllama_ms_per_step']:>11.2f} {r['bench_ms_per_step']:>11.2f} "
              f"{r['pyllama_decode_ms_per_step']:>13.2f} {r['python_ms_per_step']:>15.3f} "
              f"{r['sample_ms_per_step']:>11.3f}")


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N_GEN=32, 1 repetition (a few minutes on 2 cores)")
    ap.add_argument("--parallel", default="1,4,8", help="comma-separated P values (default 1,4,8)")
    ap.add_argument("--n-gen", type=int, default=None, help="decode steps (default 32 quick, 128 full)")
    ap.add_argument("--pp", type=int, default=32, help="prompt tokens per sequence (default 32)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 1 quick, 3 full)")
    ap.add_argument("--aggregate", choices=("best", "median"), default="best",
                    help="how repetitions are combined (default best: background load only ever slows "
                         "a run down, so the fastest repetition is the least disturbed one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--n-ubatch", type=int, default=512)
    ap.add_argument("--model", default=None, help="GGUF file (default: generated 125m q8_0, cached)")
    ap.add_argument("--batched-bench", default=None, help=f"path of llama-batched-bench (default {DEFAULT_BB})")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile one extra pyllama run at the largest P (not used for the numbers)")
    args = ap.parse_args(argv)

    n_gen = args.n_gen or (32 if args.quick else 128)
    reps = args.reps or (1 if args.quick else 3)
    Ps = [int(x) for x in args.parallel.split(",") if x.strip()]
    if args.pp * max(Ps) > args.n_batch:
        raise SystemExit("engine_bench: P x PP must fit in one batch (n_batch) so that prefill is one step")

    model = ensure_model(args.model)
    bb = find_batched_bench(args.batched_bench)
    import pyllama  # noqa: F401  (fail early)

    mach = machine_info()
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    print(f"engine_bench: model {model} ({model.stat().st_size / 2**20:.0f} MiB), PP={args.pp}, N_GEN={n_gen}, "
          f"P={Ps}, reps={reps}, threads={args.threads}", flush=True)

    results = []
    raw: List[Dict[str, Any]] = []
    for P in Ps:
        llm = open_llama(model, P, args.pp, n_gen, args.threads, args.n_batch, args.n_ubatch)
        try:
            run_pyllama(llm, P, args.pp, min(n_gen, 4), seed=10_000 + P)     # warm-up (not measured)
            py_runs, bb_runs = [], []
            for rep in range(reps):
                order = ("py", "bb") if rep % 2 == 0 else ("bb", "py")
                for which in order:
                    if which == "py":
                        r = run_pyllama(llm, P, args.pp, n_gen, seed=1000 * P + rep)
                        py_runs.append(r)
                    else:
                        r = run_batched_bench(bb, model, P, args.pp, n_gen, args.threads,
                                              args.n_batch, args.n_ubatch)
                        bb_runs.append(r)
                    print(f"  P={P} rep={rep} {which}: TG {r['tg_tps']:.1f} t/s ({r['ms_per_step']:.2f} ms/step)"
                          + (f", decode {r['decode_ms_per_step']:.2f} ms/step, python "
                             f"{r['python_ms_per_step']:.3f} ms/step (sampling {r['sample_ms_per_step']:.3f})"
                             if which == "py" else ""), flush=True)
            profile_txt = None
            if args.profile and P == max(Ps):
                prof = cProfile.Profile()
                run_pyllama(llm, P, args.pp, n_gen, seed=99_999, profile=prof)
                s = io.StringIO()
                pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
                profile_txt = s.getvalue()
        finally:
            llm.close()
        py, bench = pick(py_runs, args.aggregate), pick(bb_runs, args.aggregate)
        py_tps, bb_tps = py["tg_tps"], bench["tg_tps"]
        res = {
            "P": P,
            "pyllama_tg_tps": py_tps,
            "bench_tg_tps": bb_tps,
            "ratio": py_tps / bb_tps,
            "pyllama_ms_per_step": 1e3 * P / py_tps,
            "bench_ms_per_step": 1e3 * P / bb_tps,
            # from the same (representative) pyllama run
            "pyllama_decode_ms_per_step": py["decode_ms_per_step"],
            "python_ms_per_step": py["python_ms_per_step"],
            "sample_ms_per_step": py["sample_ms_per_step"],
            "pyllama_decode_only_tg_tps": py["decode_only_tg_tps"],
            "pyllama_tg_tps_all": [r["tg_tps"] for r in py_runs],
            "bench_tg_tps_all": [r["tg_tps"] for r in bb_runs],
            "n_ctx": ctx_size(P, args.pp, n_gen),
        }
        results.append(res)
        raw.append({"P": P, "pyllama": py_runs, "batched_bench": bb_runs})
        if profile_txt:
            res["profile_top"] = profile_txt

    try:
        mach["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    print()
    print(f"TG t/s = P x N_GEN / wall time of the N_GEN decode steps (PP={args.pp}, N_GEN={n_gen}, "
          f"{reps} rep(s), {args.aggregate}); python ms/step = metrics python_ms_per_step")
    print_table(results)
    for r in results:
        if "profile_top" in r:
            print(f"\ncProfile of one pyllama run at P={r['P']} (tottime):\n{r['profile_top']}")

    report = {
        "date": date,
        "command": " ".join(["python", "benchmarks/engine_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": mach,
        "config": {
            "mode": "quick" if args.quick else "full", "pp": args.pp, "n_gen": n_gen, "parallel": Ps,
            "reps": reps, "aggregate": args.aggregate, "threads": args.threads, "n_batch": args.n_batch,
            "n_ubatch": args.n_ubatch, "model": str(model), "model_size_mib": model.stat().st_size / 2**20,
            "model_desc": ("python -m pyllama.testing OUT " + " ".join(MODEL_ARGS)) if args.model is None
            else str(model),
            "batched_bench": str(bb),
            "tg_definition": "P * N_GEN / wall time of the N_GEN one-token-per-sequence decode steps",
        },
        "results": results,
        "runs": raw,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    md = markdown(report)
    for name in (f"engine_bench-{stamp}", "engine_bench-latest"):
        (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"{name}.md").write_text(md)
    print(f"\nengine_bench: wrote {out / f'engine_bench-{stamp}.json'} and .md (also engine_bench-latest.*)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
