"""Helpers for tests against an in-process app (aiohttp TestClient, see conftest.run_inproc)."""
from __future__ import annotations

import json
from typing import Any, Dict, List


async def post_json(client, path: str, body: Any, status: int = 200) -> Any:
    """POST JSON to an in-process app (aiohttp TestClient); check the status, return the JSON body."""
    r = await client.post(path, json=body)
    text = await r.text()
    assert r.status == status, (path, body, r.status, text)
    return json.loads(text)


async def post_stream(client, path: str, body: Dict[str, Any]) -> List[Dict[str, Any]]:
    """POST with stream=true to an in-process app: the JSON events, after checking the stream has no
    error event and ends with [DONE] where OpenAI's does (the /v1/ endpoints)."""
    r = await client.post(path, json={**body, "stream": True})
    raw = (await r.read()).decode()
    assert r.status == 200, (path, body, r.status, raw)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert "\nerror: " not in "\n" + raw, raw
    data = [ln[len("data: "):] for ln in raw.splitlines() if ln.startswith("data: ")]
    if path.startswith("/v1/"):
        assert data and data[-1] == "[DONE]", raw[-300:]
        data = data[:-1]
    return [json.loads(d) for d in data]
