#!/usr/bin/env python3
"""Head-to-head serving benchmark: pyllama's server vs llama-server vs llama-cpp-python's server.

Each server runs in turn on the same generated model with the same context, slots, threads and
batch sizes, and is driven by C concurrent streaming clients (C in 1, 4, 8, 16) that each send
requests with a fixed prompt and a fixed number of generated tokens (EOS suppressed, so every
server does the same work). Recorded per level: aggregate generated tokens/s, requests/s, time to
first token (p50, p99), inter-token latency (p50, p99), and the server process's peak RSS.

    python benchmarks/serve_bench.py --quick                 # a few minutes on 2 cores
    python benchmarks/serve_bench.py                          # the full run
    python benchmarks/serve_bench.py --servers pyllama,llama-server --concurrency 1,8

A server that is not available is reported as missing, never silently skipped:
- llama-server: built by benchmarks/build_llama_tools.sh into benchmarks/.build/;
- llama-cpp-python: `python benchmarks/serve_bench.py --setup-llama-cpp-python` installs
  llama-cpp-python[server] into benchmarks/.build/lcp-venv (compiles its own llama.cpp).
The engine's ceiling: llama-batched-bench (same build of llama.cpp as llama-server) at the same
model, threads, batch sizes and unified KV, with C sequences of the same prompt length and n_gen
tokens each. The clients send `cache_prompt: false`, so every request pays its prefill, and the
comparable ceiling is batched-bench doing that same work: C * n_gen / (T_PP + T_TG) generated
tokens per second. Each server's throughput is reported as a fraction of it (S_TG, generation
alone, is printed too).
Results go to benchmarks/results/serve-*.{json,md,png}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUILD = HERE / ".build"
RESULTS = HERE / "results"
LCP_VENV = BUILD / "lcp-venv"
LCP_VERSION = "0.3.36"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model(preset: str, ftype: str) -> Path:
    path = BUILD / "models" / f"bench-{preset}-{ftype}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pyllama.testing", str(path), "--preset", preset, "--ftype", ftype,
                        "--vocab", "llama-spm", "--seed", "0"], check=True)
    return path


def llama_server_bin() -> Optional[Path]:
    for p in (BUILD / "llama.cpp" / "bin" / "llama-server", BUILD / "bin" / "llama-server"):
        if p.exists():
            return p
    return None


def server_command(name: str, model: Path, port: int, a: argparse.Namespace) -> Optional[List[str]]:
    common = ["-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(a.ctx), "-np", str(a.parallel),
              "-kvu", "-b", str(a.batch), "-ub", str(a.ubatch), "-t", str(a.threads), "-tb", str(a.threads)]
    if name == "pyllama":
        return [sys.executable, "-m", "pyllama.server", *common, "--no-ui"]
    if name == "llama-server":
        b = llama_server_bin()
        return None if b is None else [str(b), *common, "--no-webui", *a.llama_server_args.split()]
    if name == "llama-cpp-python":
        py = LCP_VENV / "bin" / "python"
        if not py.exists():
            return None
        return [str(py), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
                "--n_ctx", str(a.ctx), "--n_batch", str(a.batch), "--n_ubatch", str(a.ubatch),
                "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads),
                # by default a new request cuts off the stream in progress; queue them instead
                "--interrupt_requests", "False"]
    raise ValueError(name)


def batched_ceiling(model: Path, a: argparse.Namespace, n_prompt: int) -> Dict[str, Any]:
    """llama-batched-bench's S_TG at each concurrency level (or why it is missing)."""
    sys.path.insert(0, str(HERE))
    from engine_bench import DEFAULT_BB, run_batched_bench

    if not DEFAULT_BB.is_file():
        return {"missing": True, "why": "llama-batched-bench not built (benchmarks/build_llama_tools.sh)"}
    levels = []
    for c in a.concurrency:
        r = run_batched_bench(DEFAULT_BB, model, c, n_prompt, a.n_gen, a.threads, a.batch, a.ubatch)
        ceiling = c * a.n_gen / (r["t_pp_s"] + r["t_tg_s"])
        print(f"  llama-batched-bench P={c:<3d} {ceiling:8.1f} tok/s for the same work  (S_TG {r['tg_tps']:.1f}, "
              f"S_PP {r['pp_tps']:.1f})", flush=True)
        levels.append({"concurrency": c, "tokens_per_s": ceiling, "tg_tps": r["tg_tps"], "pp_tps": r["pp_tps"],
                       "cmd": r["cmd"]})
    return {"missing": False, "levels": levels}


PROFILE = RESULTS / "serve-pyllama.pyspy.txt"


def summarize_profile(path: Path = PROFILE, top: int = 12) -> Dict[str, Any]:
    """Share of samples per thread, and per thread the innermost Python frames with the most samples
    (time inside a C call, e.g. llama_decode, counts for the Python frame that made it)."""
    if not path.exists():
        return {}
    import re

    per_thread: Dict[str, int] = {}
    leaf: Dict[str, Dict[str, int]] = {}
    names: Dict[str, str] = {}
    total = 0
    lines = path.read_text().splitlines()
    for line in lines:  # "thread (TID): name" where py-spy knows the name
        m = re.match(r"thread \((\d+)\): ([^;]+?)(?: \d+)?$", line.split(";")[0])
        if m:
            names[m.group(1)] = m.group(2)
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        m = re.match(r"thread \((\d+)\)", frames[0])
        thread = names.get(m.group(1), f"thread {m.group(1)}") if m else "?"
        count = int(n)
        total += count
        per_thread[thread] = per_thread.get(thread, 0) + count
        # the innermost Python frame (what Python code is waiting in, or running)
        py = [f for f in frames[1:] if ".py:" in f or ".pyx" in f or ".pxi" in f]
        key = py[-1] if py else frames[-1]
        leaf.setdefault(thread, {})[key] = leaf.setdefault(thread, {}).get(key, 0) + count
    out = {"samples": total, "threads": {}}
    for th, n in sorted(per_thread.items(), key=lambda kv: -kv[1]):
        frames = sorted(leaf[th].items(), key=lambda kv: -kv[1])[:top]
        out["threads"][th] = {"share": n / total, "top": [(f, c / n) for f, c in frames]}
    return out


def peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    async with aiohttp.ClientSession() as s:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            try:
                async with s.get(base + "/health") as r:
                    if r.status == 200:
                        return
                    health_missing = r.status == 404      # llama-cpp-python has no /health
                if health_missing:
                    async with s.get(base + "/v1/models") as r:
                        if r.status == 200:
                            return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise TimeoutError("server did not become ready")


async def one_request(s: aiohttp.ClientSession, base: str, prompt: str, n_gen: int, eos: int) -> Dict[str, Any]:
    body = {"prompt": prompt, "max_tokens": n_gen, "temperature": 0, "stream": True, "ignore_eos": True,
            "logit_bias": {str(eos): -100}, "cache_prompt": False}
    t0 = time.perf_counter()
    times: List[float] = []
    async with s.post(base + "/v1/completions", json=body) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                    continue
                d = json.loads(ev[6:])
                ch = d.get("choices") or []
                if ch and ch[0].get("text"):
                    times.append(time.perf_counter())
    return {"t0": t0, "times": times, "end": time.perf_counter()}


async def run_level(base: str, conc: int, reqs_per_client: int, prompt: str, n_gen: int, eos: int) -> Dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0, force_close=True)) as s:
        await one_request(s, base, prompt, 4, eos)  # warm-up
        t0 = time.perf_counter()

        async def client() -> List[Dict[str, Any]]:
            return [await one_request(s, base, prompt, n_gen, eos) for _ in range(reqs_per_client)]

        res = [r for rs in await asyncio.gather(*(client() for _ in range(conc))) for r in rs]
        wall = time.perf_counter() - t0
    toks = sum(len(r["times"]) for r in res)
    ttft = [(r["times"][0] - r["t0"]) * 1e3 for r in res if r["times"]]
    itl = [(b - a) * 1e3 for r in res for a, b in zip(r["times"], r["times"][1:])]

    def pct(xs: List[float], q: float) -> float:
        if not xs:
            return float("nan")
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    return {"concurrency": conc, "requests": len(res), "tokens": toks, "wall_s": wall,
            "tokens_per_s": toks / wall, "requests_per_s": len(res) / wall,
            "ttft_p50_ms": pct(ttft, 0.5), "ttft_p99_ms": pct(ttft, 0.99),
            "ttft_mean_ms": statistics.fmean(ttft) if ttft else float("nan"), "ttft_ms": sorted(ttft),
            "itl_p50_ms": pct(itl, 0.5), "itl_p99_ms": pct(itl, 0.99)}


async def bench_server(name: str, model: Path, a: argparse.Namespace, prompt: str, eos: int) -> Dict[str, Any]:
    port = free_port()
    cmd = server_command(name, model, port, a)
    if cmd is None:
        return {"server": name, "missing": True,
                "why": "llama-server not built (benchmarks/build_llama_tools.sh)" if name == "llama-server"
                else "llama-cpp-python not installed (--setup-llama-cpp-python)"}
    profiling = a.profile and name == "pyllama"
    if profiling:
        # py-spy cannot attach to a running process everywhere (ptrace rules); it starts the server
        cmd = ["py-spy", "record", "--format", "raw", "--threads", "--rate", "200", "--nonblocking",
               "-o", str(PROFILE), "--", *cmd]
    log = open(RESULTS / f"serve-{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, proc)
        levels = []
        for c in a.concurrency:
            r = await run_level(base, c, a.requests_per_client, prompt, a.n_gen, eos)
            print(f"  {name:17s} C={c:<3d} {r['tokens_per_s']:8.1f} tok/s  {r['requests_per_s']:6.2f} req/s  "
                  f"TTFT p50 {r['ttft_p50_ms']:7.1f} ms (mean {r['ttft_mean_ms']:7.1f})  ITL p50 {r['itl_p50_ms']:6.1f} ms",
                  flush=True)
            levels.append(r)
        pid = proc.pid
        if profiling:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            pid = int(kids[0]) if kids else pid
        return {"server": name, "missing": False, "levels": levels, "peak_rss_mib": peak_rss_mib(pid),
                "command": " ".join(cmd)}
    except Exception as e:  # noqa: BLE001 - reported in the results
        return {"server": name, "missing": False, "error": f"{type(e).__name__}: {e}"}
    finally:
        if profiling:  # stop the server; py-spy then writes its file and exits
            for kid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                os.kill(int(kid), signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def setup_llama_cpp_python() -> None:
    """Install llama-cpp-python[server] into its own venv (a separate build of llama.cpp)."""
    if not (LCP_VENV / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LCP_VENV)], check=True)
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=ON -DLLAMA_OPENSSL=OFF"
                   + (" -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache"
                      if subprocess.run(["which", "ccache"], capture_output=True).returncode == 0 else ""))
    subprocess.run([str(LCP_VENV / "bin" / "python"), "-m", "pip", "install", f"llama-cpp-python[server]=={LCP_VERSION}"],
                   check=True, env=env)


def write_results(res: Dict[str, Any], stem: str) -> None:
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2))
    lines = [f"# Serving benchmark ({res['date']}, {res['machine']})", "", f"`{res['command']}`", "",
             f"model: {res['model']}, prompt {res['prompt_tokens']} tokens, {res['n_gen']} generated per request, "
             f"ctx {res['ctx']}, {res['parallel']} slots, {res['threads']} threads", "",
             "| server | C | tok/s | req/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | peak RSS MiB "
             "| of batched-bench |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in res["servers"]:
        if s.get("missing") or s.get("error"):
            lines.append(f"| {s['server']} | {'missing: ' + s.get('why', '') if s.get('missing') else 'error: ' + s['error']} |")
            continue
        for l in s["levels"]:
            lines.append(f"| {s['server']} | {l['concurrency']} | {l['tokens_per_s']:.1f} | {l['requests_per_s']:.2f} | "
                         f"{l['ttft_p50_ms']:.1f} | {l['ttft_p99_ms']:.1f} | {l['itl_p50_ms']:.1f} | "
                         f"{l['itl_p99_ms']:.1f} | {s['peak_rss_mib']:.0f} | "
                         + (f"{l['fraction_of_batched_bench']:.2f} |" if "fraction_of_batched_bench" in l else "- |"))
    ceiling = res.get("ceiling") or {}
    if ceiling.get("missing"):
        lines.append(f"| llama-batched-bench | missing: {ceiling['why']} |")
    for l in ceiling.get("levels", []):
        lines.append(f"| llama-batched-bench (same work; S_TG {l['tg_tps']:.1f}) | {l['concurrency']} | "
                     f"{l['tokens_per_s']:.1f} | | | | | | | 1.00 |")
    lines += ["", "pyllama's ratio to each peer (throughput; TTFT p50 as peer/pyllama, > 1 means pyllama is faster):", ""]
    for r in res["ratios"]:
        lines.append(f"- vs {r['peer']} at C={r['concurrency']}: throughput x{r['throughput_ratio']:.2f}, "
                     f"TTFT p50 x{r['ttft_ratio']:.2f}")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def plot(res: Dict[str, Any], stem: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for s in res["servers"]:
        if s.get("missing") or s.get("error"):
            continue
        cs = [l["concurrency"] for l in s["levels"]]
        ax1.plot(cs, [l["tokens_per_s"] for l in s["levels"]], marker="o", label=s["server"])
        ax2.plot(cs, [l["ttft_p50_ms"] for l in s["levels"]], marker="o", label=s["server"])
    ax1.set(xlabel="concurrent clients", ylabel="generated tokens/s", title="Aggregate throughput")
    ax2.set(xlabel="concurrent clients", ylabel="ms", title="Time to first token (p50)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--servers", default="pyllama,llama-server,llama-cpp-python")
    ap.add_argument("--concurrency", default=None, help="comma list (default 1,4,8,16)")
    ap.add_argument("--preset", default="125m", choices=["tiny", "125m", "1b"])
    ap.add_argument("--ftype", default=None, help="default: q8_0 for 125m, q4_0 for 1b")
    ap.add_argument("--n-gen", type=int, default=None)
    ap.add_argument("--prompt-words", type=int, default=None)
    ap.add_argument("--requests-per-client", type=int, default=None)
    ap.add_argument("--ctx", type=int, default=None)
    ap.add_argument("--parallel", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--setup-llama-cpp-python", action="store_true")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the llama-batched-bench ceiling")
    ap.add_argument("--llama-server-args", default="", help="extra flags for llama-server, e.g. '--cache-ram 0'")
    ap.add_argument("--profile", action="store_true",
                    help="run pyllama's server under py-spy (results/serve-pyllama.pyspy.txt) and summarize "
                         "where its threads spend their time; use one --concurrency level")
    a = ap.parse_args()
    if a.setup_llama_cpp_python:
        setup_llama_cpp_python()
        return 0
    a.concurrency = [int(x) for x in (a.concurrency or ("1,4,8" if a.quick else "1,4,8,16")).split(",")]
    a.ftype = a.ftype or ("q4_0" if a.preset == "1b" else "q8_0")
    a.n_gen = a.n_gen or (32 if a.quick else 128)
    a.prompt_words = a.prompt_words or (32 if a.quick else 128)
    a.requests_per_client = a.requests_per_client or (1 if a.quick else 2)
    a.parallel = a.parallel or max(a.concurrency)
    a.ctx = a.ctx or a.parallel * (2 * a.prompt_words + a.n_gen + 64)
    RESULTS.mkdir(parents=True, exist_ok=True)
    model = ensure_model(a.preset, a.ftype)
    import pyllama
    m = pyllama.Model(model, pyllama.ModelParams(vocab_only=True))
    prompt = " ".join(["hello"] * a.prompt_words)
    n_prompt = len(m.vocab.tokenize(prompt))
    eos = m.vocab.eos or 2
    m.close()
    res: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} cores, "
                           f"{platform.machine()}", "command": " ".join(["python", "benchmarks/serve_bench.py"] + sys.argv[1:]),
                           "model": f"{a.preset} {a.ftype}", "prompt_tokens": n_prompt, "n_gen": a.n_gen,
                           "ctx": a.ctx, "parallel": a.parallel, "threads": a.threads, "servers": [], "ratios": []}
    for name in a.servers.split(","):
        print(f"{name}:", flush=True)
        r = asyncio.run(bench_server(name, model, a, prompt, eos))
        if r.get("missing"):
            print(f"  MISSING: {r['why']}")
        elif r.get("error"):
            print(f"  ERROR: {r['error']}")
        res["servers"].append(r)
    by = {s["server"]: s for s in res["servers"] if not s.get("missing") and not s.get("error")}
    if not a.no_ceiling:
        print("llama-batched-bench (ceiling):", flush=True)
        res["ceiling"] = batched_ceiling(model, a, n_prompt)
        if res["ceiling"].get("missing"):
            print(f"  MISSING: {res['ceiling']['why']}")
        for s in by.values():
            for lvl, cl in zip(s["levels"], res["ceiling"].get("levels", [])):
                lvl["fraction_of_batched_bench"] = lvl["tokens_per_s"] / cl["tokens_per_s"]
        if not res["ceiling"].get("missing"):
            for name, s in by.items():
                print(f"{name} as a fraction of llama-batched-bench: " + ", ".join(
                    f"C={lvl['concurrency']}: {lvl['fraction_of_batched_bench']:.2f}" for lvl in s["levels"]))
    if "pyllama" in by:
        for peer in by:
            if peer == "pyllama":
                continue
            for mine, theirs in zip(by["pyllama"]["levels"], by[peer]["levels"]):
                ratio = {"peer": peer, "concurrency": mine["concurrency"],
                         "throughput_ratio": mine["tokens_per_s"] / theirs["tokens_per_s"],
                         "ttft_ratio": theirs["ttft_p50_ms"] / mine["ttft_p50_ms"]}
                res["ratios"].append(ratio)
                print(f"pyllama vs {peer} at C={ratio['concurrency']}: throughput x{ratio['throughput_ratio']:.2f}, "
                      f"TTFT p50 x{ratio['ttft_ratio']:.2f} (peer/pyllama)")
    if a.profile and "pyllama" in by:
        res["profile"] = prof = summarize_profile()
        print(f"py-spy profile of pyllama's server ({prof.get('samples', 0)} samples, {PROFILE}):")
        for th, d in prof.get("threads", {}).items():
            print(f"  thread {th}: {d['share']:.0%} of samples")
            for frame, share in d["top"][:6]:
                print(f"      {share:6.1%}  {frame}")
    stem = f"serve-{a.preset}-{a.ftype}{'-quick' if a.quick else ''}"
    write_results(res, stem)
    plot(res, stem)
    print(f"results: {RESULTS / stem}.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
