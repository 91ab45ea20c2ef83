"""HTTP edges: API keys, CORS, and every kind of bad input (each answered with an OpenAI-shaped
JSON error, after which the server still serves)."""
from __future__ import annotations

import json

import pytest

KEYS = "k1,k2"
ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def key_server(start_server, tiny_model_path):
    return start_server(tiny_model_path, "-np", "2", "-c", "1024", "--metrics", "--api-key", KEYS)


def assert_error(r, status: int, type_: str = None) -> dict:
    assert r.status == status, r
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["code"] == status and isinstance(err["message"], str) and err["message"]
    if type_:
        assert err["type"] == type_, err
    return err


COMPLETION = {"prompt": "Hello", "max_tokens": 2, "temperature": 0}


# ---------------------------------------------------------------- API keys

def test_api_key_required(key_server):
    err = assert_error(key_server.post("/v1/completions", COMPLETION), 401, "authentication_error")
    assert "API Key" in err["message"]
    assert_error(key_server.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer nope"}), 401)
    assert_error(key_server.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer k1x"}), 401)
    assert_error(key_server.post("/v1/completions", COMPLETION, headers={"x-api-key": "k3"}), 401)
    for path in ("/props", "/slots", "/metrics"):
        assert_error(key_server.get(path), 401)
    assert_error(key_server.post("/tokenize", {"content": "x"}), 401)


def test_api_key_accepted(key_server):
    r = key_server.post("/v1/completions", COMPLETION, headers={"Authorization": "Bearer k2"})
    assert r.status == 200, r
    assert r.json()["usage"]["completion_tokens"] == 2
    r = key_server.post("/completion", {"prompt": "Hello", "n_predict": 1}, headers={"x-api-key": "k1"})
    assert r.status == 200 and r.json()["tokens_predicted"] == 1
    r = key_server.get("/props", headers={"Authorization": "bearer k1"})      # scheme is case-insensitive
    assert r.status == 200 and r.json()["total_slots"] == 2
    events = key_server.stream("/completion", {"prompt": "Hi", "n_predict": 2, "stream": True},
                               headers={"Authorization": "Bearer k1"})
    assert json.loads(events[-1])["stop"] is True


def test_public_paths(key_server):
    for path in ("/health", "/v1/health"):
        r = key_server.get(path)
        assert r.status == 200 and r.json() == {"status": "ok"}
    for path in ("/v1/models", "/models"):     # not public: llama-server exempts only health and the UI
        assert key_server.get(path).status == 401
        r = key_server.get(path, headers={"Authorization": "Bearer k1"})
        assert r.status == 200 and r.json()["data"][0]["object"] == "model"
    r = key_server.get("/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    assert b"<html" in r.body.lower()


def test_openai_sdk_authentication_error(key_server):
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=key_server.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as e:
            bad.completions.create(model="m", prompt="x", max_tokens=1)
        assert e.value.status_code == 401 and e.value.body["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()                               # not public (llama-server's rule)
    with openai.OpenAI(base_url=key_server.url + "/v1", api_key="k2", max_retries=0) as good:
        assert good.completions.create(model="m", prompt="x", max_tokens=1).usage.completion_tokens == 1


def test_api_prefix_with_keys(inproc, tiny_model_path):
    async def scenario(client):
        r = await client.get("/api/health")
        assert r.status == 200                                 # public under the prefix too
        r = await client.get("/api/v1/models")
        assert r.status == 401                                 # as llama-server: only health is public
        r = await client.post("/api/completion", json={"prompt": "x", "n_predict": 1})
        assert r.status == 401
        r = await client.post("/api/completion", json={"prompt": "x", "n_predict": 1},
                              headers={"Authorization": "Bearer sekret"})
        assert r.status == 200 and (await r.json())["tokens_predicted"] == 1
        r = await client.get("/health")                        # not without the prefix
        assert r.status == 404

    inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "256", "--api-prefix", "/api", "--api-key", "sekret"],
           scenario)


# ---------------------------------------------------------------- CORS

def test_cors_preflight_and_headers(key_server):
    r = key_server.request("OPTIONS", "/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status == 204, r                        # no API key needed for a preflight
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "authorization" in r.headers["access-control-allow-headers"].lower()

    r = key_server.get("/health", headers={"Origin": ORIGIN})
    assert r.status == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = key_server.post("/v1/completions", COMPLETION, headers={"Origin": ORIGIN})     # errors too
    assert r.status == 401 and r.headers["access-control-allow-origin"] == ORIGIN
    # and streams
    conn = key_server.connection()
    try:
        conn.request("POST", "/completion", body=json.dumps({"prompt": "Hi", "n_predict": 1, "stream": True}),
                     headers={"Origin": ORIGIN, "Authorization": "Bearer k1", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Access-Control-Allow-Origin") == ORIGIN
        resp.read()
    finally:
        conn.close()
    r = key_server.get("/health")                    # no Origin: no CORS headers
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_restricted(inproc, tiny_model_path):
    async def scenario(client):
        pre = {"Access-Control-Request-Method": "POST"}
        ok = await client.options("/v1/completions", headers={"Origin": "http://a.example", **pre})
        assert ok.status == 204 and ok.headers["Access-Control-Allow-Origin"] == "http://a.example"
        bad = await client.options("/v1/completions", headers={"Origin": "http://b.example", **pre})
        assert bad.status >= 400 and "Access-Control-Allow-Origin" not in bad.headers
        r = await client.get("/health", headers={"Origin": "http://b.example"})
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
        r = await client.get("/health", headers={"Origin": "http://a.example"})
        assert r.headers["Access-Control-Allow-Origin"] == "http://a.example"

    inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "256", "--cors-origins", "http://a.example"], scenario)


# ---------------------------------------------------------------- bad input

def test_bad_inputs_then_still_serving(inproc, tiny_model_path):
    async def scenario(client):
        async def check(method, path, status, type_=None, **kw):
            r = await client.request(method, path, **kw)
            assert r.status == status, (method, path, kw, r.status, await r.text())
            assert r.headers["Content-Type"].startswith("application/json"), r.headers
            err = (await r.json())["error"]
            assert err["code"] == status and err["message"]
            if type_:
                assert err["type"] == type_, err
            return err

        def post(path, status, type_=None, **kw):
            return check("POST", path, status, type_, **kw)

        # not JSON, empty, not an object
        err = await post("/v1/chat/completions", 400, "invalid_request_error", data=b"{bad json")
        assert "JSON" in err["message"]
        await post("/completion", 400, data=b"")
        await post("/completion", 400, data=b"\xff\xfe")
        for body in (b"[1, 2]", b'"a string"', b"5", b"null", b"true"):
            err = await post("/v1/completions", 400, data=body)
            assert "object" in err["message"]
        # wrong types
        await post("/completion", 400, json={"prompt": 5})
        await post("/completion", 400, json={"prompt": {"text": "x"}})
        err = await post("/completion", 400, json={"prompt": "x", "n_predict": "many"})
        assert "n_predict" in err["message"]
        await post("/v1/chat/completions", 400, json={"messages": "hello"})
        await post("/v1/chat/completions", 400, json={"messages": [{"role": "user", "content": "x"}],
                                                      "temperature": "hot"})
        await post("/v1/chat/completions", 400, json={"messages": [{"role": "wizard", "content": "x"}]})
        await post("/tokenize", 400, json={"content": 5})
        await post("/detokenize", 400, json={"tokens": "abc"})
        await post("/completion", 400, json={"prompt": ["x", True]})
        # missing fields
        err = await post("/v1/chat/completions", 400, json={"model": "m"})
        assert "messages" in err["message"]
        await post("/completion", 400, json={"n_predict": 2})
        await post("/tokenize", 400, json={})
        await post("/v1/chat/completions", 400, json={"messages": []})
        await post("/completion", 400, json={"prompt": []})
        # out of range
        err = await post("/v1/chat/completions", 400, json={"messages": [{"role": "user", "content": "x"}],
                                                            "top_p": 2})
        assert "top_p" in err["message"]
        err = await post("/completion", 400, json={"prompt": "x", "n_probs": -1})
        assert "n_probs" in err["message"]
        await post("/v1/completions", 400, json={"prompt": "x", "n": 0})
        await post("/v1/completions", 400, json={"prompt": "x", "seed": -7})
        await post("/completion", 400, data=b'{"prompt": "x", "temperature": NaN}')
        await post("/completion", 400, data=b'{"prompt": "x", "top_k": 1e400}')
        await post("/completion", 400, json={"prompt": [0, 10 ** 9]})                 # token id
        await post("/detokenize", 400, json={"tokens": [-1]})
        await post("/completion", 400, json={"prompt": "x", "id_slot": 7})
        await post("/completion", 400, json={"prompt": "x", "logit_bias": [[99999999, 1.0]]})
        # too large a body
        err = await post("/completion", 413, data=b'{"prompt": "' + b"x" * 5000 + b'"}',
                         headers={"Content-Type": "application/json"})
        # a prompt over the context, streaming or not, on each generation endpoint
        long = "hi " * 290                  # over 256 tokens, under the 1000-byte body limit
        for path, body in (("/completion", {"prompt": long}), ("/v1/completions", {"prompt": long}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": long}]})):
            for stream in (False, True):
                err = await post(path, 400, "exceed_context_size_error", json={**body, "stream": stream})
                assert err["n_ctx"] == 256 and err["n_prompt_tokens"] > 256
        # unknown routes, wrong methods
        err = await check("GET", "/no/such/thing", 404, "not_found_error")
        await check("POST", "/v1/nope", 404)
        await check("GET", "/v1/chat/completions", 405)
        await check("POST", "/health", 405)
        await check("DELETE", "/slots", 405)
        await check("POST", "/slots/0?action=dance", 400)
        await check("POST", "/slots/x?action=erase", 400)
        # still serving
        r = await client.post("/completion", json={"prompt": "Hello", "n_predict": 3, "temperature": 0})
        assert r.status == 200
        d = await r.json()
        assert d["tokens_predicted"] == 3 and d["stop"] is True and isinstance(d["content"], str)
        r = await client.get("/slots")
        assert not any(s["is_processing"] for s in await r.json())

    # a 256-token slot and a 1000-byte body limit (max_body_bytes has no flag: set on the config)
    inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "256"], scenario, max_body_bytes=1000)
