"""POST /slots/{id}?action=save|erase|restore: a slot's KV to a file and back."""
from __future__ import annotations

import os

import pytest


def test_slot_save_erase_restore_round_trip(inproc, tiny_model_path, tmp_path):
    save_dir = tmp_path / "slots"
    save_dir.mkdir()

    async def scenario(client):
        async def call(path, body=None, status=200):
            r = await client.post(path, json=body)
            d = await r.json()
            assert r.status == status, (path, body, d)
            return d

        async def slot0():
            return (await (await client.get("/slots")).json())[0]

        body = {"prompt": "The slot remembers this prompt", "n_predict": 8, "temperature": 0, "id_slot": 0,
                "ignore_eos": True}
        first = await call("/completion", body)
        n_prompt = first["tokens_evaluated"]
        assert first["id_slot"] == 0 and first["tokens_cached"] == 0
        assert (await slot0())["n_cached"] == n_prompt + 8 - 1          # the last token is never decoded

        saved = await call("/slots/0?action=save", {"filename": "s0.bin"})
        assert saved["id_slot"] == 0 and saved["filename"] == "s0.bin" and saved["n_saved"] == n_prompt + 7
        path = save_dir / "s0.bin"
        assert path.is_file() and path.stat().st_size == saved["n_written"] > 0
        assert "save_ms" in saved["timings"]

        erased = await call("/slots/0?action=erase")
        assert erased["n_erased"] == n_prompt + 7
        assert (await slot0())["n_cached"] == 0

        restored = await call("/slots/0?action=restore", {"filename": "s0.bin"})
        assert restored["n_restored"] == n_prompt + 7 and restored["n_read"] == path.stat().st_size
        assert (await slot0())["n_cached"] == n_prompt + 7

        again = await call("/completion", body)
        assert again["id_slot"] == 0
        assert again["tokens_cached"] == n_prompt - 1                    # all the prompt but its last token
        assert again["timings"]["prompt_n"] == 1
        assert again["content"] == first["content"]                      # continues identically

        # without the restore, nothing is cached (and the text is still the same)
        await call("/slots/0?action=erase")
        fresh = await call("/completion", body)
        assert fresh["tokens_cached"] == 0 and fresh["content"] == first["content"]

        # restoring into another slot works too
        await call("/slots/1?action=restore", {"filename": "s0.bin"})
        other = await call("/completion", {**body, "id_slot": 1})
        assert other["tokens_cached"] == n_prompt - 1 and other["content"] == first["content"]

        # bad file names never touch the file system outside the folder
        for bad in ("../x", "a/b", "..", ".", "/etc/passwd", "", "x\\y", "s0.bin/..", 5, None):
            for action in ("save", "restore"):
                d = await call(f"/slots/0?action={action}", {"filename": bad}, 400)
                assert d["error"]["type"] == "invalid_request_error"
        assert not (tmp_path / "x").exists()
        assert sorted(os.listdir(save_dir)) == ["s0.bin"]
        await call("/slots/0?action=save", {}, 400)                           # no file name
        await call("/slots/0?action=restore", {"filename": "missing.bin"}, 400)
        await call("/slots/9?action=save", {"filename": "s9.bin"}, 400)       # no such slot
        await call("/slots/0?action=explode", {"filename": "s0.bin"}, 400)

    inproc(["-m", str(tiny_model_path), "-np", "2", "-c", "1024", "--slot-save-path", str(save_dir)], scenario)


def test_slot_save_needs_a_path(inproc, tiny_model_path):
    async def scenario(client):
        for action in ("save", "restore"):
            r = await client.post(f"/slots/0?action={action}", json={"filename": "a.bin"})
            assert r.status == 501
            err = (await r.json())["error"]
            assert err["type"] == "not_supported_error" and "--slot-save-path" in err["message"]

    inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "256"], scenario)


@pytest.mark.parametrize("busy_action", ["save", "erase"])
def test_slot_action_on_a_busy_slot(inproc, tiny_model_path, tmp_path, busy_action):
    import asyncio

    async def scenario(client):
        task = asyncio.ensure_future(client.post("/completion", json={
            "prompt": "busy", "n_predict": 400, "ignore_eos": True, "id_slot": 0}))
        for _ in range(200):
            if (await (await client.get("/slots")).json())[0]["is_processing"]:
                break
            await asyncio.sleep(0.005)
        else:
            pytest.skip("the request finished before the slot was seen busy")
        r = await client.post(f"/slots/0?action={busy_action}", json={"filename": "b.bin"})
        status = r.status
        (await task).release()
        return status

    status = inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "512", "--slot-save-path", str(tmp_path)],
                    scenario)
    assert status == 400                            # the slot is busy: refused, not corrupted


@pytest.mark.parametrize("cache_ram", ["64", "0"])
def test_ram_prompt_cache_brings_back_an_evicted_prompt(inproc, tiny_model_path, cache_ram):
    """-np 1: B's prompt takes the only slot, A's tokens go to the RAM cache; A again reuses them
    (with --cache-ram 0 it is evaluated again), and the text is the same either way."""
    a_prompt = "A long prompt that the RAM cache should keep for later: " + "alpha beta gamma delta " * 10
    b_prompt = "Something else entirely, with nothing in common. " * 3

    async def scenario(client):
        async def complete(prompt, **kw):
            r = await client.post("/completion", json={"prompt": prompt, "n_predict": 12, "temperature": 0,
                                                      "ignore_eos": True, **kw})
            d = await r.json()
            assert r.status == 200, d
            return d

        a = await complete(a_prompt)
        n_a = a["tokens_evaluated"]
        b = await complete(b_prompt)
        assert b["tokens_cached"] <= 1                                    # at most the BOS token
        c = await complete(a_prompt)
        fresh = await complete(a_prompt + " ", cache_prompt=False)        # evaluated whole
        assert fresh["tokens_cached"] == 0
        oa = await client.post("/v1/completions", json={"prompt": b_prompt, "max_tokens": 4, "temperature": 0})
        oa = await oa.json()
        if cache_ram == "0":
            assert c["tokens_cached"] <= 1 and c["timings"]["prompt_n"] >= n_a - 1
            assert oa["usage"]["prompt_tokens_details"]["cached_tokens"] <= 1
        else:
            assert c["tokens_cached"] == n_a - 1 and c["timings"]["cache_n"] == n_a - 1
            assert c["timings"]["prompt_n"] == 1
            # B's tokens went to RAM when A came back; the OpenAI endpoint reports them too
            assert oa["usage"]["prompt_tokens_details"]["cached_tokens"] == b["tokens_evaluated"] - 1
        assert c["content"] == a["content"]

    inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "1024", "--cache-ram", cache_ram], scenario)
