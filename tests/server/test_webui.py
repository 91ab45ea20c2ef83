"""The web UI (src/pyllama/server/static) driven by a real headless Chromium.

The page is served by a fake backend defined here (an aiohttp app that streams canned OpenAI
chunks), so these tests need neither a model nor pyllama's server. Chromium is driven directly
over the DevTools protocol: it is started with ``--remote-debugging-port=0``, the port is read
from ``DevToolsActivePort`` in its profile folder, and the page's websocket is spoken to with
aiohttp's websocket client (no selenium, no chromedriver).

Chromium comes from Debian:

    apt-get update && apt-get install -y chromium

When no Chromium is found the tests try that install themselves if they run as root on a
machine with apt-get (set PYLLAMA_WEBUI_NO_INSTALL=1 to forbid it), and skip otherwise.
PYLLAMA_CHROMIUM=/path/to/chrome picks a browser. A screenshot of the finished chat is written
to /tmp/webui.png (and the dark scheme to /tmp/webui-dark.png); PYLLAMA_WEBUI_SCREENSHOT moves it.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (the server extra) is not installed")
from aiohttp import web  # noqa: E402

STATIC = Path(__file__).resolve().parents[2] / "src" / "pyllama" / "server" / "static"
SCREENSHOT = Path(os.environ.get("PYLLAMA_WEBUI_SCREENSHOT", "/tmp/webui.png"))
INSTALL_CMD = "apt-get update && apt-get install -y chromium"
TEST_TIMEOUT = 50.0

# --------------------------------------------------------------------------- Chromium


def _which_chromium() -> str | None:
    env = os.environ.get("PYLLAMA_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome",
                 "chromium-headless-shell", "headless_shell"):
        path = shutil.which(name)
        if path:
            return path
    for path in ("/usr/lib/chromium/chromium", "/usr/lib/chromium/chromium-headless-shell"):
        if os.access(path, os.X_OK):
            return path
    return None


def _apt_install_chromium() -> str:
    """Try Debian's package; returns '' on success or why it could not be done."""
    if os.environ.get("PYLLAMA_WEBUI_NO_INSTALL"):
        return "PYLLAMA_WEBUI_NO_INSTALL is set"
    if not shutil.which("apt-get"):
        return "apt-get is not available"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode == 0:
            return ""
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
        r = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get failed: {e}"
    return "" if r.returncode == 0 else f"apt-get install chromium failed: {r.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = _which_chromium()
    if exe is None and not os.environ.get("PYLLAMA_CHROMIUM"):
        why = _apt_install_chromium()
        exe = _which_chromium()
        if exe is None:
            pytest.skip(f"Chromium not found and not installable ({why or 'no binary after install'}); "
                        f"install it with: {INSTALL_CMD}")
    if exe is None:
        pytest.skip(f"PYLLAMA_CHROMIUM={os.environ['PYLLAMA_CHROMIUM']} is not executable")
    return exe


class Browser:
    """One headless Chromium with one page, spoken to over the DevTools protocol."""

    def __init__(self, exe: str, profile: Path):
        self.exe = exe
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.next_id = 0
        self.pending: dict[int, asyncio.Future] = {}
        self.errors: list[str] = []   # uncaught exceptions and console.error calls of the page

    async def __aenter__(self) -> "Browser":
        self.profile.mkdir(parents=True, exist_ok=True)
        log = open(self.profile / "chromium.log", "wb")
        args = [self.exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--mute-audio", "--hide-scrollbars", "--remote-allow-origins=*",
                "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                "--window-size=1280,860", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.profile / "chromium.log").read_text(errors="replace")[-1500:]
                await self.close()
                pytest.skip(f"Chromium did not start ({self.exe}); its output:\n{tail}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        ws_url = None
        for _ in range(100):
            async with self.session.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json(content_type=None) if t.get("type") == "page"]
            if pages:
                ws_url = pages[0]["webSocketDebuggerUrl"]
                break
            await asyncio.sleep(0.05)
        assert ws_url, "Chromium has no page target"
        self.ws = await self.session.ws_connect(ws_url, max_msg_size=0)
        self.reader = asyncio.ensure_future(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)   # our own session: chromium and its helpers
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.pending.pop(data["id"], None)
                if fut and not fut.done():
                    if "error" in data:
                        fut.set_exception(RuntimeError(f"CDP error: {data['error']}"))
                    else:
                        fut.set_result(data.get("result", {}))
            elif data.get("method") == "Runtime.exceptionThrown":
                d = data["params"]["exceptionDetails"]
                self.errors.append(d.get("exception", {}).get("description") or d.get("text", "?"))
            elif data.get("method") == "Runtime.consoleAPICalled" and data["params"]["type"] == "error":
                self.errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                            for a in data["params"]["args"]))
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, **params):
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        return await asyncio.wait_for(fut, 20)

    async def eval(self, expression: str):
        r = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"page error evaluating {expression!r}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                state = await self.eval("document.querySelector('#messages') && "
                                        "document.querySelector('#messages').innerText")
                raise AssertionError(f"timed out waiting for {what}; #messages shows: {state!r}; "
                                     f"page errors: {self.errors}")
            await asyncio.sleep(0.05)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && !!document.querySelector('#send')",
                            f"{url} to load")

    async def click(self, selector: str) -> None:
        box = await self.eval(f"""(() => {{
            const e = document.querySelector({json.dumps(selector)});
            if (!e) return null;
            e.scrollIntoView({{block: 'center'}});
            const r = e.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width, h: r.height}};
        }})()""")
        assert box and box["w"] > 0 and box["h"] > 0, f"{selector} is missing or not visible"
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                            button="left", clickCount=1)

    async def type(self, selector: str, text: str) -> None:
        await self.click(selector)
        await self.send("Input.insertText", text=text)

    async def press_enter(self) -> None:
        await self.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter",
                        windowsVirtualKeyCode=13, nativeVirtualKeyCode=13, text="\r", unmodifiedText="\r")
        await self.send("Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter",
                        windowsVirtualKeyCode=13, nativeVirtualKeyCode=13)

    async def screenshot(self, path: Path) -> None:
        import base64
        r = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(r["data"]))


# --------------------------------------------------------------------------- fake backend

TIMINGS = {"prompt_n": 5, "prompt_ms": 50.0, "prompt_per_second": 100.0,
           "predicted_n": 2, "predicted_ms": 47.06, "predicted_per_second": 42.5}


def _chunk(delta: dict, finish: str | None = None, **extra) -> dict:
    return {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": "fake-model", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


class FakeBackend:
    """Serves the static UI and a canned streaming /v1/chat/completions, like llama-server would."""

    def __init__(self, api_key: str | None = None, prefix: str = ""):
        self.api_key = api_key
        self.prefix = prefix.rstrip("/")
        self.requests: list[dict] = []
        self.disconnected = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    def _authorized(self, request: web.Request) -> bool:
        return not self.api_key or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"error": {"code": 401, "message": "Invalid API Key",
                                             "type": "authentication_error"}}, status=401)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name") or "index.html"
        path = STATIC / name
        if "/" in name or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Cache-Control": "no-store"})

    async def props(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({"model_alias": "fake-alias", "model_path": "/models/fake-model.gguf",
                                  "default_generation_settings": {"n_ctx": 4096}})

    async def models(self, request: web.Request) -> web.Response:   # public, as in llama-server
        return web.json_response({"object": "list", "data": [{"id": "fake-model.gguf", "object": "model"}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthorized()
        body = await request.json()
        self.requests.append({"authorization": request.headers.get("Authorization"), "body": body})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(obj) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj)
            await resp.write(f"data: {data}\n\n".encode())
            await asyncio.sleep(0.03)

        prompt = body["messages"][-1]["content"]
        await resp.write(b": ping\n\n")
        if "slow" in prompt:          # streams until the client goes away
            try:
                await send(_chunk({"role": "assistant", "content": None}))
                for _ in range(300):
                    await send(_chunk({"content": "tok "}))
                    await asyncio.sleep(0.07)
            except ConnectionResetError:      # the client went away: what Stop must cause
                self.disconnected.set()
            except asyncio.CancelledError:
                self.disconnected.set()
                raise
            return resp
        if "fail" in prompt:          # an error in the middle of the stream
            await send({"error": {"code": 500, "message": "boom: the fake backend failed", "type": "server_error"}})
            return resp
        await send(_chunk({"role": "assistant", "content": None}))
        await send(_chunk({"reasoning_content": "The user said hi."}))
        await send(_chunk({"content": "Hello"}))
        await send(_chunk({"content": " world"}))
        await send(_chunk({}, "stop", timings=TIMINGS))
        await send("[DONE]")
        return resp

    async def __aenter__(self) -> "FakeBackend":
        app = web.Application()
        p = self.prefix
        app.router.add_get(p + "/", self.static)
        app.router.add_get(p + "/props", self.props)
        app.router.add_get(p + "/v1/models", self.models)
        app.router.add_post(p + "/v1/chat/completions", self.chat)
        app.router.add_get(p + "/static/{name}", self.static)
        app.router.add_get(p + "/{name}", self.static)
        self.runner = web.AppRunner(app, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{p}/"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, TEST_TIMEOUT))


LAST_ASSISTANT = "[...document.querySelectorAll('#messages .msg.assistant')].pop()"

# --------------------------------------------------------------------------- tests


def test_static_files_exist():
    for name in ("index.html", "app.js", "style.css"):
        assert (STATIC / name).is_file(), name
    html = (STATIC / "index.html").read_text()
    # only relative references, so the page works under --api-prefix
    assert 'src="app.js"' in html and 'href="style.css"' in html
    assert "http://" not in html and "https://" not in html
    js = (STATIC / "app.js").read_text()
    assert not re.search(r"\.(inner|outer)HTML\s*[+]?=|insertAdjacentHTML|document\.write", js)


def test_chat_streams_reply_with_speed(chromium, tmp_path):
    async def scenario():
        async with FakeBackend() as backend, Browser(chromium, tmp_path / "profile") as b:
            await b.goto(backend.url)
            await b.wait_for("document.querySelector('#model-name').textContent === 'fake-alias'",
                             "the model name from /props")
            # settings are sent with the request and persisted
            await b.type("#temperature", "0.5")
            await b.type("#system-prompt", "Be brief.")
            await b.type("#input", "hi")
            await b.click("#send")
            await b.wait_for(f"{LAST_ASSISTANT}?.querySelector('.content')?.textContent === 'Hello world' && "
                             f"!!{LAST_ASSISTANT}.querySelector('.speed')", "the streamed reply and its speed")
            speed = await b.eval(f"{LAST_ASSISTANT}.querySelector('.speed').textContent")
            assert speed == "2 tokens, 42.5 tok/s"
            thinking = await b.eval(f"{LAST_ASSISTANT}.querySelector('details.thinking')?.textContent")
            assert thinking and "The user said hi." in thinking
            assert await b.eval("document.querySelector('#messages .msg.user').textContent") == "You:hi"
            assert await b.eval("document.querySelector('#input').value") == ""
            assert await b.eval("document.querySelector('#send').disabled") is False
            assert await b.eval("document.querySelector('#stop').disabled") is True

            (req,) = backend.requests
            assert req["authorization"] is None
            assert req["body"]["stream"] is True
            assert req["body"]["temperature"] == 0.5
            assert "top_k" not in req["body"]          # blank settings are left to the server
            assert req["body"]["messages"] == [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": "hi"}]
            saved = json.loads(await b.eval("localStorage.getItem('pyllama.settings')"))
            assert saved["temperature"] == "0.5" and saved["system-prompt"] == "Be brief."

            # second turn with Enter: the history includes the first reply (without the thinking)
            await b.type("#input", "again")
            await b.press_enter()
            await b.wait_for("document.querySelectorAll('#messages .speed').length === 2", "the second reply")
            assert backend.requests[1]["body"]["messages"][1:] == [
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello world"},
                {"role": "user", "content": "again"}]

            await b.eval("document.activeElement.blur()")
            await b.screenshot(SCREENSHOT)
            await b.send("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
            await b.screenshot(SCREENSHOT.with_name(SCREENSHOT.stem + "-dark" + SCREENSHOT.suffix))

            # new chat clears the conversation
            await b.click("#new-chat")
            assert await b.eval("document.querySelectorAll('#messages .msg').length") == 0
            assert b.errors == []

    run(scenario())


def test_api_key_prompt_under_prefix(chromium, tmp_path):
    async def scenario():
        async with FakeBackend(api_key="sekrit", prefix="/foo") as backend, \
                Browser(chromium, tmp_path / "profile") as b:
            await b.goto(backend.url)      # .../foo/: every API call must stay under /foo
            # /props needs the key; the public /v1/models gives the name
            await b.wait_for("document.querySelector('#model-name').textContent === 'fake-model.gguf'",
                             "the model name from /v1/models")
            await b.type("#input", "hi")
            await b.click("#send")
            await b.wait_for(f"{LAST_ASSISTANT}?.querySelector('.error-box')?.textContent.includes('API key')",
                             "the API key prompt")
            assert backend.requests == []
            # the unsent text is back in the input and the key field is shown
            assert await b.eval("document.querySelector('#input').value") == "hi"
            await b.type("#api-key", "sekrit")
            await b.click("#input")
            await b.press_enter()
            await b.wait_for(f"{LAST_ASSISTANT}.querySelector('.content').textContent === 'Hello world' && "
                             f"!!{LAST_ASSISTANT}.querySelector('.speed')", "the reply once the key is set")
            (req,) = backend.requests
            assert req["authorization"] == "Bearer sekrit"
            assert req["body"]["messages"] == [{"role": "user", "content": "hi"}]   # the failed turn is not resent
            assert await b.eval("localStorage.getItem('pyllama.apiKey')") == "sekrit"
            await b.wait_for("document.querySelector('#model-name').textContent === 'fake-alias'",
                             "/props with the key")
            assert b.errors == []

    run(scenario())


def test_stop_aborts_and_errors_are_shown(chromium, tmp_path):
    async def scenario():
        async with FakeBackend() as backend, Browser(chromium, tmp_path / "profile") as b:
            await b.goto(backend.url)
            await b.type("#input", "go slow")
            await b.press_enter()
            await b.wait_for(f"{LAST_ASSISTANT}?.querySelector('.content')?.textContent.startsWith('tok tok')",
                             "streaming to start")
            assert await b.eval("document.querySelector('#stop').disabled") is False
            await b.click("#stop")
            await asyncio.wait_for(backend.disconnected.wait(), 5)   # the server saw the client go
            await b.wait_for(f"!!{LAST_ASSISTANT}.querySelector('.speed')", "the stopped reply's footer")
            assert "stopped" in await b.eval(f"{LAST_ASSISTANT}.querySelector('.meta').textContent")
            assert await b.eval("document.querySelector('#send').disabled") is False
            partial = await b.eval(f"{LAST_ASSISTANT}.querySelector('.content').textContent")

            # an error event in the stream, and text that looks like HTML stays text
            await b.type("#input", "<b>fail</b> <img src=x onerror=\"console.error('xss')\">")
            await b.click("#send")
            await b.wait_for(f"{LAST_ASSISTANT}?.querySelector('.error-box')?.textContent.includes('boom')",
                             "the stream's error event")
            assert await b.eval("document.querySelector('#messages b, #messages img')") is None
            msgs = backend.requests[1]["body"]["messages"]
            assert msgs[1] == {"role": "assistant", "content": partial}
            assert b.errors == []

    run(scenario())


def test_chat_with_the_real_server(chromium, tmp_path, chat_model_path):
    """The page against pyllama's own server and engine (random weights: any text will do)."""
    from aiohttp.test_utils import TestServer

    from pyllama.server import create_app, parse_args, wait_ready

    async def scenario():
        cfg = parse_args(["-m", str(chat_model_path), "-np", "2", "-c", "1024", "-t", "1", "-tb", "1",
                          "-a", "real-model"], environ={})
        app = create_app(cfg)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            await wait_ready(app, timeout=120)
            async with Browser(chromium, tmp_path / "profile") as b:
                await b.goto(str(server.make_url("/")))
                await b.wait_for("document.querySelector('#model-name').textContent === 'real-model'",
                                 "the model alias from the real /props")
                await b.type("#max-tokens", "12")
                await b.type("#input", "hello there")
                await b.click("#send")
                await b.wait_for(f"!!{LAST_ASSISTANT}?.querySelector('.speed')", "a streamed reply from the engine",
                                 timeout=120)
                text = await b.eval(f"{LAST_ASSISTANT}.querySelector('.content').textContent")
                speed = await b.eval(f"{LAST_ASSISTANT}.querySelector('.speed').textContent")
                assert text.strip(), "the reply is empty"
                assert re.match(r"\d+ tokens, [\d.]+ tok/s", speed), speed
                assert b.errors == []
        finally:
            await server.close()

    run(scenario())
