"""The command line: --help, refused llama-server flags, LLAMA_ARG_* variables."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pyllama.server import ConfigError, parse_args


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyllama.server", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_help_lists_flags():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for flag in ("-m", "--model", "-c", "--ctx-size", "-np", "--parallel", "--api-key", "--api-key-file", "--port",
                 "--host", "--embeddings", "--pooling", "--metrics", "--slot-save-path", "--cors-origins",
                 "--chat-template", "--jinja", "-ngl", "--temp", "--seed", "--reranking", "--no-webui", "--props"):
        assert f"{flag} " in out or f"{flag}," in out or f"{flag}\n" in out or f"{flag}=" in out, flag
    assert "--hf-repo" not in out                   # refused flags are not advertised


def test_unsupported_flag_exits_2():
    r = run_cli("-m", "model.gguf", "--hf-repo", "x")
    assert r.returncode == 2
    assert "not supported" in r.stderr and "--hf-repo" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("--ctx-size", "2048")               # no model
    assert r.returncode == 2 and "model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [("-hf", "org/model"), ("--mmproj", "p.gguf"), ("--model-draft", "d.gguf"),
                                  ("--spec-type", "ngram"), ("--lookup-cache-static", "f"), ("-sp",)])
def test_unsupported_flags_refused(args):
    with pytest.raises(ConfigError, match="not supported") as e:
        parse_args(["-m", "x.gguf", *args], environ={})
    assert args[0] in str(e.value)


def test_argparse_errors_exit_2(capsys):
    for argv in (["-m", "x.gguf", "--no-such-flag"], ["-m", "x.gguf", "-c", "lots"],
                 ["-m", "x.gguf", "--pooling", "median"]):
        with pytest.raises(SystemExit) as e:
            parse_args(argv, environ={})
        assert e.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_env_vars_and_flag_precedence():
    env = {"LLAMA_ARG_CTX_SIZE": "1024", "LLAMA_ARG_MODEL": "env.gguf", "LLAMA_ARG_N_PARALLEL": "3",
           "LLAMA_ARG_ENDPOINT_METRICS": "1", "LLAMA_API_KEY": "a,b", "LLAMA_ARG_PORT": "9999",
           "LLAMA_ARG_HOST": "0.0.0.0"}
    cfg = parse_args([], environ=env)
    assert cfg.context.n_ctx == 1024 and cfg.model.path == "env.gguf" and cfg.engine.n_parallel == 3
    assert cfg.n_slots == 3 and cfg.endpoints.metrics is True and cfg.http.api_keys == ("a", "b")
    assert cfg.http.port == 9999 and cfg.http.host == "0.0.0.0"
    # a flag wins over its variable, in every spelling
    assert parse_args(["-c", "512"], environ=env).context.n_ctx == 512
    assert parse_args(["--ctx-size", "256"], environ=env).context.n_ctx == 256
    assert parse_args(["--ctx-size=128"], environ=env).context.n_ctx == 128
    assert parse_args(["-m", "flag.gguf"], environ=env).model.path == "flag.gguf"
    assert parse_args(["--api-key", "z"], environ=env).http.api_keys == ("z",)
    assert parse_args(["-np", "2"], environ=env).n_slots == 2
    # no variables: the defaults
    cfg = parse_args(["-m", "x.gguf"], environ={})
    assert cfg.context.n_ctx == 0 and cfg.n_slots == 4 and cfg.unified and not cfg.endpoints.metrics
    assert cfg.http.api_keys == ()
    assert not parse_args(["-m", "x.gguf", "-np", "4"], environ={}).unified    # explicit -np: per-slot KV
    assert parse_args(["-m", "x.gguf"], environ={"LLAMA_ARG_ENDPOINT_METRICS": "0"}).endpoints.metrics is False


def test_parse_args_errors():
    with pytest.raises(ConfigError, match="not supported"):
        parse_args(["-m", "x.gguf", "--hf-repo", "a/b"], environ={})
    with pytest.raises(ConfigError, match="model"):
        parse_args([], environ={})
    with pytest.raises(ConfigError, match="parallel"):
        parse_args(["-m", "x.gguf", "-np", "0"], environ={})
    with pytest.raises(ConfigError, match="ssl"):
        parse_args(["-m", "x.gguf", "--ssl-key-file", "k.pem"], environ={})
    with pytest.raises(ConfigError, match="JSON"):
        parse_args(["-m", "x.gguf", "--chat-template-kwargs", "{nope"], environ={})
    with pytest.raises(ConfigError, match="api-key-file"):
        parse_args(["-m", "x.gguf", "--api-key-file", "/no/such/file"], environ={})


def test_api_key_file(tmp_path):
    f = tmp_path / "keys.txt"
    f.write_text("# comment\nk1\n\n  k2  \n")
    assert parse_args(["-m", "x.gguf", "--api-key-file", str(f), "--api-key", "k0"], environ={}).http.api_keys == \
        ("k0", "k1", "k2")


def test_cache_reuse_flag_and_env():
    def reuse(*a, env=None):
        return parse_args(["-m", "x.gguf", *a], environ=env or {}).generation.cache_reuse
    assert reuse() == 0
    assert reuse("--cache-reuse", "256") == 256
    assert reuse(env={"LLAMA_ARG_CACHE_REUSE": "64"}) == 64
    assert reuse("--cache-reuse", "0", env={"LLAMA_ARG_CACHE_REUSE": "64"}) == 0


def test_no_cont_batching_is_parsed():
    assert parse_args(["-m", "x.gguf", "-nocb"], environ={}).engine.cont_batching is False
    assert parse_args(["-m", "x.gguf"], environ={"LLAMA_ARG_CONT_BATCHING": "0"}).engine.cont_batching is False


def test_model_that_fails_to_load_exits_1(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model" * 100)
    r = run_cli("-m", str(bad), "--port", "0")
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "failed to load" in r.stderr


def test_reasoning_flags_set_template_defaults():
    def kw(*a, env=None):
        return parse_args(["-m", "x.gguf", *a], environ=env or {}).chat.chat_template_kwargs
    assert kw() == {}
    assert kw("-rea", "off") == {"enable_thinking": False}
    assert kw("--reasoning", "on") == {"enable_thinking": True}
    assert kw("--reasoning", "auto") == {}
    assert kw(env={"LLAMA_ARG_REASONING": "off"}) == {"enable_thinking": False}
    # an explicit template kwarg wins over -rea, as a later llama-server flag would
    assert kw("-rea", "off", "--chat-template-kwargs", '{"enable_thinking": true}') == {"enable_thinking": True}
    assert kw("--reasoning-effort", "high") == {"reasoning_effort": "high"}
    assert kw("--reasoning-effort", "default") == {}
    with pytest.raises(ConfigError, match="--reasoning: unknown value 'maybe'"):
        kw("-rea", "maybe")


def test_reasoning_off_closes_the_thinking_block(inproc, thinking_model_path):
    async def scenario(client):
        r = await client.post("/apply-template", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status == 200
        return (await r.json())["prompt"]

    model = str(thinking_model_path("opens"))
    on = inproc(["-m", model, "-rea", "on"], scenario)
    off = inproc(["-m", model, "-rea", "off"], scenario)
    assert on.rstrip().endswith("<think>")
    assert "</think>" in off[off.rindex("<think>"):]


def test_cache_ram_flags_and_env():
    eng = lambda *a, env=None: parse_args(["-m", "x.gguf", *a], environ=env or {}).engine  # noqa: E731
    assert eng().cache_ram_mib == 8192 and eng().cache_idle_slots is True    # llama-server's defaults
    assert eng("-cram", "0").cache_ram_mib == 0
    assert eng("--cache-ram", "-1").cache_ram_mib == -1
    assert eng("--cache-ram=512").cache_ram_mib == 512
    assert eng("--no-cache-idle-slots").cache_idle_slots is False
    env = {"LLAMA_ARG_CACHE_RAM": "256", "LLAMA_ARG_CACHE_IDLE_SLOTS": "0"}
    assert eng(env=env).cache_ram_mib == 256 and eng(env=env).cache_idle_slots is False
    e = eng("-cram", "100", "--cache-idle-slots", env=env)
    assert e.cache_ram_mib == 100 and e.cache_idle_slots is True             # flags win
    r = run_cli("--help")
    assert "--cache-ram" in r.stdout and "--no-cache-idle-slots" in r.stdout
