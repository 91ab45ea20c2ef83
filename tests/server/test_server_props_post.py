"""POST /props as llama-server: 501 unless started with --props; then {"success": true} for any body
(upstream accepts no property yet and reads no body), changing nothing GET /props shows."""
from __future__ import annotations

from aio_helpers import post_json  # noqa: E402


def tiny_argv(path, *more):
    return ["-m", str(path), "-np", "2", "-c", "1024", *more]


def test_post_props_disabled(inproc, tiny_model_path):
    async def scenario(client):
        d = await post_json(client, "/props", {}, 501)
        assert d["error"]["type"] == "not_supported_error" and d["error"]["code"] == 501
        assert d["error"]["message"] == ("This server does not support changing global properties. "
                                         "Start it with `--props`")
        assert (await (await client.get("/props")).json())["endpoint_props"] is False

    inproc(tiny_argv(tiny_model_path), scenario)


def test_post_props_enabled(inproc, tiny_model_path):
    async def scenario(client):
        before = await (await client.get("/props")).json()
        assert before["endpoint_props"] is True
        assert await post_json(client, "/props", {}) == {"success": True}
        assert await post_json(client, "/props", {"total_slots": 7, "n_ctx": 1}) == {"success": True}
        r = await client.post("/props", data=b"not json")
        assert r.status == 200 and await r.json() == {"success": True}
        r = await client.post("/props")
        assert r.status == 200 and await r.json() == {"success": True}
        after = await (await client.get("/props")).json()
        assert after == before                       # nothing changed
        doc = await (await client.get("/openapi.json")).json()
        assert "post" in doc["paths"]["/props"] and "get" in doc["paths"]["/props"]

    inproc(tiny_argv(tiny_model_path, "--props"), scenario)
