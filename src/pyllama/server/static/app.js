// pyllama web UI: a small chat client for the OpenAI-compatible /v1/chat/completions endpoint.
// Plain JavaScript, no build step, no external resources. Untrusted text is only ever inserted
// with textContent / text nodes, never innerHTML.
'use strict';

(() => {
  const $ = (sel) => document.querySelector(sel);

  // ---------------------------------------------------------------- API location
  // Every API URL is resolved against the page's own location, so the UI works behind
  // --api-prefix (page at /foo/ -> /foo/v1/chat/completions).
  function apiBase() {
    const u = new URL(location.href);
    u.search = '';
    u.hash = '';
    let p = u.pathname;
    const last = p.slice(p.lastIndexOf('/') + 1);
    if (last && !last.includes('.')) p += '/'; // "/foo" is a directory, "/foo/index.html" is not
    p = p.slice(0, p.lastIndexOf('/') + 1);
    if (p.endsWith('/static/')) p = p.slice(0, -'static/'.length); // page opened as /static/index.html
    u.pathname = p;
    return u;
  }
  const BASE = apiBase();
  const api = (path) => new URL(path, BASE).href;

  // ---------------------------------------------------------------- persisted settings
  const KEY_SETTINGS = 'pyllama.settings';
  const KEY_API_KEY = 'pyllama.apiKey';
  const KEY_PANEL = 'pyllama.settingsOpen';

  const store = {
    get(k, fallback) {
      try { const v = localStorage.getItem(k); return v === null ? fallback : v; } catch { return fallback; }
    },
    set(k, v) { try { localStorage.setItem(k, v); } catch { /* private mode, quota: ignore */ } },
  };

  // id -> [request field, parser]
  const SAMPLING = {
    'temperature': ['temperature', parseFloat],
    'top-p': ['top_p', parseFloat],
    'top-k': ['top_k', (s) => parseInt(s, 10)],
    'min-p': ['min_p', parseFloat],
    'max-tokens': ['max_tokens', (s) => parseInt(s, 10)],
    'seed': ['seed', (s) => parseInt(s, 10)],
  };
  const SETTING_IDS = ['system-prompt', ...Object.keys(SAMPLING)];

  function loadSettings() {
    let saved = {};
    try { saved = JSON.parse(store.get(KEY_SETTINGS, '{}')) || {}; } catch { saved = {}; }
    for (const id of SETTING_IDS) {
      if (typeof saved[id] === 'string') $('#' + id).value = saved[id];
    }
    $('#api-key').value = store.get(KEY_API_KEY, '');
  }

  function saveSettings() {
    const out = {};
    for (const id of SETTING_IDS) out[id] = $('#' + id).value;
    store.set(KEY_SETTINGS, JSON.stringify(out));
  }

  function samplingParams() {
    const out = {};
    for (const [id, [field, parse]] of Object.entries(SAMPLING)) {
      const raw = $('#' + id).value.trim();
      if (raw === '') continue;
      const v = parse(raw);
      if (Number.isFinite(v)) out[field] = v;
    }
    return out;
  }

  function apiKey() { return $('#api-key').value.trim(); }

  function headers(json) {
    const h = {};
    if (json) h['Content-Type'] = 'application/json';
    const key = apiKey();
    if (key) h['Authorization'] = 'Bearer ' + key;
    return h;
  }

  // ---------------------------------------------------------------- settings panel
  function setPanel(open, remember) {
    document.body.classList.toggle('settings-open', open);
    $('#settings-toggle').setAttribute('aria-expanded', String(open));
    if (remember) store.set(KEY_PANEL, open ? '1' : '0');
  }

  function initPanel() {
    const saved = store.get(KEY_PANEL, null);
    setPanel(saved === null ? window.innerWidth >= 1000 : saved === '1', false);
    $('#settings-toggle').addEventListener('click', () => {
      setPanel(!document.body.classList.contains('settings-open'), true);
    });
    $('#settings-close').addEventListener('click', () => { setPanel(false, true); $('#input').focus(); });
    for (const id of SETTING_IDS) $('#' + id).addEventListener('input', saveSettings);
    let keyTimer = null;
    $('#api-key').addEventListener('input', () => {
      store.set(KEY_API_KEY, apiKey());
      clearTimeout(keyTimer);
      keyTimer = setTimeout(loadModelName, 400);
    });
    $('#reset-settings').addEventListener('click', () => {
      for (const id of Object.keys(SAMPLING)) $('#' + id).value = '';
      saveSettings();
    });
  }

  // ---------------------------------------------------------------- model name
  async function fetchJSON(path) {
    const res = await fetch(api(path), { headers: headers(false) });
    if (!res.ok) throw Object.assign(new Error('HTTP ' + res.status), { status: res.status });
    return res.json();
  }

  const basename = (p) => String(p).split(/[\\/]/).pop();

  async function loadModelName() {
    const el = $('#model-name');
    const dot = $('#model-status');
    let name = '', title = '', status = 0;
    try {
      const props = await fetchJSON('props');
      name = props.model_alias || (props.model_path ? basename(props.model_path) : '');
      title = props.model_path || name;
      const ctx = props.default_generation_settings && props.default_generation_settings.n_ctx;
      if (ctx) title += ` (n_ctx ${ctx})`;
    } catch (e) { status = e.status || status; }
    if (!name) {
      try {
        const models = await fetchJSON('v1/models');
        const m = (models.data && models.data[0]) || (models.models && models.models[0]);
        if (m) { name = m.id || m.name || m.model || ''; title = name; }
      } catch (e) { status = e.status || status; }
    }
    if (name) {
      el.textContent = name;
      el.title = title;
      dot.className = 'dot ok';
    } else {
      el.textContent = status === 401 ? 'API key required' : 'server unreachable';
      el.title = '';
      dot.className = 'dot bad';
    }
  }

  // ---------------------------------------------------------------- rendering
  const messagesEl = $('#messages');

  function nearBottom() {
    return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 80;
  }
  function scrollToBottom() { messagesEl.scrollTop = messagesEl.scrollHeight; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Text with ``` fenced blocks shown as <pre>; everything goes in as text nodes.
  function renderText(target, text) {
    target.replaceChildren();
    const re = /```[^\n`]*\n?([\s\S]*?)(?:```|$)/g;
    let last = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > last) target.append(document.createTextNode(text.slice(last, m.index)));
      const pre = el('pre');
      pre.append(el('code', '', m[1].replace(/\n$/, '')));
      target.append(pre);
      last = re.lastIndex;
      if (text[last] === '\n') last++;
      re.lastIndex = last;
      if (m[0].length === 0) break;
    }
    if (last < text.length) target.append(document.createTextNode(text.slice(last)));
  }

  function updateEmpty() {
    $('#empty').hidden = messagesEl.querySelector('.msg') !== null;
  }

  function addUserMessage(text) {
    const m = el('div', 'msg user');
    m.append(el('span', 'visually-hidden', 'You:'));
    const c = el('div', 'content');
    renderText(c, text);
    m.append(c);
    messagesEl.append(m);
    updateEmpty();
    scrollToBottom();
    return m;
  }

  async function copyText(text, btn) {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      const ta = el('textarea');
      ta.value = text;
      ta.style.position = 'fixed';
      ta.style.opacity = '0';
      document.body.append(ta);
      ta.select();
      try { document.execCommand('copy'); } catch { /* nothing more to try */ }
      ta.remove();
    }
    const old = btn.textContent;
    btn.textContent = 'Copied';
    setTimeout(() => { btn.textContent = old; }, 1200);
  }

  // One assistant reply being streamed.
  class Reply {
    constructor() {
      this.el = el('div', 'msg assistant streaming');
      this.el.setAttribute('aria-busy', 'true');
      this.el.append(el('span', 'visually-hidden', 'Assistant:'));
      this.thinking = null;
      this.content = el('div', 'content');
      this.el.append(this.content);
      messagesEl.append(this.el);
      updateEmpty();
      this.text = '';
      this.reasoning = '';
      this.thinkStart = null;
      this.thinkEnd = null;
      this.pending = false;
    }

    // Split a leading <think>…</think> out of the content (servers that don't separate reasoning).
    parts() {
      let reasoning = this.reasoning;
      let text = this.text;
      const m = /^\s*<think>/.exec(text);
      if (m) {
        const rest = text.slice(m[0].length);
        const end = rest.indexOf('</think>');
        if (end < 0) { reasoning += rest; text = ''; } else {
          reasoning += rest.slice(0, end);
          text = rest.slice(end + '</think>'.length).replace(/^\s+/, '');
        }
      }
      return { reasoning, text };
    }

    ensureThinking() {
      if (this.thinking) return;
      const d = el('details', 'thinking');
      d.open = true;
      const s = el('summary', '', 'Thinking…');
      d.append(s, el('div', 'thinking-body'));
      this.el.insertBefore(d, this.content);
      this.thinking = d;
    }

    render() {
      this.pending = false;
      const stick = nearBottom();
      const { reasoning, text } = this.parts();
      if (reasoning) {
        this.ensureThinking();
        this.thinking.querySelector('.thinking-body').textContent = reasoning.replace(/^\s+/, '');
        if (text && this.thinkEnd === null) {
          this.thinkEnd = performance.now();
          this.thinking.open = false; // collapse once the answer starts
        }
        const summary = this.thinking.querySelector('summary');
        if (this.thinkEnd !== null) {
          const secs = (this.thinkEnd - (this.thinkStart || this.thinkEnd)) / 1000;
          summary.textContent = secs >= 0.1 ? `Thought for ${secs.toFixed(1)} s` : 'Thoughts';
        }
      }
      renderText(this.content, text);
      if (stick) scrollToBottom();
    }

    schedule() {
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => this.render());
    }

    add(content, reasoning) {
      const now = performance.now();
      if ((reasoning || /^\s*<think>/.test(this.text + content)) && this.thinkStart === null) this.thinkStart = now;
      if (reasoning) this.reasoning += reasoning;
      if (content) this.text += content;
      this.schedule();
    }

    finish() {
      this.render();
      if (this.thinking && this.thinkEnd === null) {
        this.thinkEnd = performance.now();
        this.render();
      }
      this.el.classList.remove('streaming');
      this.el.removeAttribute('aria-busy');
    }

    meta() {
      let m = this.el.querySelector('.meta');
      if (!m) {
        m = el('div', 'meta');
        this.el.append(m);
      }
      return m;
    }

    setSpeed(text, title, note) {
      const m = this.meta();
      const s = el('span', 'speed', text);
      if (title) s.title = title;
      m.append(s);
      if (note) m.append(el('span', 'note', note));
      const answer = this.parts().text;
      if (answer) {
        const b = el('button', 'btn ghost small copy', 'Copy');
        b.type = 'button';
        b.setAttribute('aria-label', 'Copy reply');
        b.addEventListener('click', () => copyText(answer, b));
        m.append(b);
      }
    }

    setError(message, retry) {
      this.el.classList.add('error');
      const box = el('div', 'error-box');
      box.setAttribute('role', 'alert');
      box.append(el('span', 'error-icon', '⚠'), el('span', 'error-text', message));
      if (retry) {
        const b = el('button', 'btn small retry', 'Retry');
        b.type = 'button';
        b.addEventListener('click', retry);
        box.append(b);
      }
      this.el.append(box);
      if (nearBottom()) scrollToBottom();
    }
  }

  // ---------------------------------------------------------------- SSE
  // Yields the data payload of each server-sent event of a fetch body.
  async function* sseEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
          if (line === '') {
            if (data.length) { yield data.join('\n'); data = []; }
          } else if (line.startsWith(':')) {
            // comment / keep-alive ping
          } else if (line.startsWith('data:')) {
            data.push(line.slice(5).replace(/^ /, ''));
          } // event:, id:, retry: are not used
        }
      }
      buf += decoder.decode();
      if (buf.startsWith('data:')) data.push(buf.slice(5).replace(/^ /, ''));
      if (data.length) yield data.join('\n');
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function errorMessage(err, fallback) {
    if (!err) return fallback;
    if (typeof err === 'string') return err;
    if (typeof err.message === 'string' && err.message) return err.message;
    if (err.error) return errorMessage(err.error, fallback);
    return fallback;
  }

  async function responseError(res) {
    let detail = '';
    try {
      const txt = await res.text();
      try { detail = errorMessage(JSON.parse(txt), ''); } catch { detail = txt.trim().slice(0, 500); }
    } catch { /* body unreadable */ }
    if (res.status === 401) {
      const had = apiKey() !== '';
      return {
        auth: true,
        text: had
          ? `The server rejected the API key (401${detail ? ': ' + detail : ''}). Check the API key in Settings, then send again.`
          : 'This server requires an API key. Enter it in Settings → API key, then send again.',
      };
    }
    return { text: `Error ${res.status}${res.statusText ? ' ' + res.statusText : ''}${detail ? ': ' + detail : ''}` };
  }

  // ---------------------------------------------------------------- chat
  let history = [];          // [{role, content}] sent to the server (system prompt added per request)
  let controller = null;     // AbortController of the request in flight
  let generation = 0;        // bumps on "new chat" so a late reply can't land in a cleared chat

  function setBusy(busy) {
    document.body.classList.toggle('busy', busy);
    $('#send').disabled = busy;
    $('#stop').disabled = !busy;
  }

  function requestMessages() {
    const sys = $('#system-prompt').value.trim();
    return sys ? [{ role: 'system', content: sys }, ...history] : history.slice();
  }

  function fmtRate(x) { return x >= 100 ? x.toFixed(0) : x.toFixed(1); }

  async function generate(userEl) {
    const gen = generation;
    const reply = new Reply();
    controller = new AbortController();
    setBusy(true);

    const t0 = performance.now();
    let tFirst = null, tLast = null, chunks = 0;
    let timings = null, usage = null, finish = null;
    let error = null, aborted = false;

    try {
      const res = await fetch(api('v1/chat/completions'), {
        method: 'POST',
        headers: headers(true),
        body: JSON.stringify({ messages: requestMessages(), stream: true, ...samplingParams() }),
        signal: controller.signal,
      });
      const ctype = res.headers.get('content-type') || '';
      if (!res.ok) {
        error = await responseError(res);
      } else if (ctype.includes('application/json')) {
        // A server that answered without streaming.
        const j = await res.json();
        if (j.error) error = { text: errorMessage(j.error, 'error') };
        const msg = j.choices && j.choices[0] && j.choices[0].message;
        if (msg) { reply.add(msg.content || '', msg.reasoning_content || ''); chunks = 1; tFirst = tLast = performance.now(); }
        timings = j.timings || null;
        usage = j.usage || null;
        finish = j.choices && j.choices[0] && j.choices[0].finish_reason;
      } else {
        for await (const data of sseEvents(res.body)) {
          if (data.trim() === '[DONE]') break;
          let obj;
          try { obj = JSON.parse(data); } catch { continue; }
          if (obj.error) { error = { text: errorMessage(obj.error, 'The server reported an error.') }; break; }
          if (obj.timings) timings = obj.timings;
          if (obj.usage) usage = obj.usage;
          const ch = obj.choices && obj.choices[0];
          if (!ch) continue;
          const d = ch.delta || {};
          const content = typeof d.content === 'string' ? d.content : '';
          const reasoning = typeof d.reasoning_content === 'string' ? d.reasoning_content : '';
          if (content || reasoning) {
            const now = performance.now();
            if (tFirst === null) tFirst = now;
            tLast = now;
            chunks++;
            reply.add(content, reasoning);
          }
          if (ch.finish_reason) finish = ch.finish_reason;
        }
      }
    } catch (e) {
      if (e && e.name === 'AbortError') aborted = true;
      else error = { text: 'Could not reach the server: ' + (e && e.message ? e.message : String(e)) };
    } finally {
      if (gen === generation) {
        controller = null;
        setBusy(false);
      }
    }

    reply.finish();
    if (gen !== generation) return; // chat was cleared meanwhile

    const answer = reply.parts().text;
    const produced = chunks > 0;
    if (answer) history.push({ role: 'assistant', content: answer });

    if (produced || aborted) {
      let n, rate, title = '';
      if (timings && Number.isFinite(timings.predicted_per_second) && Number.isFinite(timings.predicted_n)) {
        n = timings.predicted_n;
        rate = timings.predicted_per_second;
        const parts = [];
        if (Number.isFinite(timings.prompt_n)) {
          parts.push(`prompt: ${timings.prompt_n} tokens` +
            (Number.isFinite(timings.prompt_per_second) ? `, ${fmtRate(timings.prompt_per_second)} tok/s` : ''));
        }
        parts.push(`generation: ${n} tokens, ${fmtRate(rate)} tok/s (server timings)`);
        title = parts.join('\n');
      } else {
        n = usage && Number.isFinite(usage.completion_tokens) ? usage.completion_tokens : chunks;
        const span = tFirst !== null && tLast !== null && n > 1 ? (tLast - tFirst) / 1000 : 0;
        const secs = span > 0.05 ? span : ((tLast || performance.now()) - t0) / 1000;
        rate = secs > 0 ? (span > 0.05 ? n - 1 : n) / secs : 0;
        title = 'measured in the browser';
      }
      let note = '';
      if (aborted) note = 'stopped';
      else if (finish === 'length') note = 'max tokens reached';
      reply.setSpeed(`${n} tokens, ${fmtRate(rate)} tok/s`, title, note);
    }

    if (error) {
      let retry = null;
      if (!answer) {
        // Nothing usable came back: take the user's turn out of the history and offer to resend it.
        const last = history[history.length - 1];
        if (last && last.role === 'user') {
          history.pop();
          userEl.classList.add('failed');
          userEl.title = 'Not sent';
          const input = $('#input');
          if (!input.value.trim()) { input.value = last.content; autosize(); }
          retry = () => {
            if (controller) return;
            reply.el.remove();
            userEl.remove();
            if (input.value === last.content) { input.value = ''; autosize(); }
            sendText(last.content);
          };
        }
      }
      reply.setError(error.text, retry);
      if (error.auth) {
        setPanel(true, false);
        $('#api-key').focus();
        $('#api-key').select();
      }
    }
  }

  function sendText(text) {
    if (controller || !text.trim()) return;
    history.push({ role: 'user', content: text });
    const userEl = addUserMessage(text);
    generate(userEl);
  }

  function send() {
    const input = $('#input');
    const text = input.value;
    if (controller || !text.trim()) return;
    input.value = '';
    autosize();
    sendText(text);
  }

  function stop() {
    if (controller) controller.abort();
  }

  function newChat() {
    generation++;
    stop();
    controller = null;
    setBusy(false);
    history = [];
    for (const m of messagesEl.querySelectorAll('.msg')) m.remove();
    updateEmpty();
    $('#input').focus();
  }

  // ---------------------------------------------------------------- composer
  function autosize() {
    const t = $('#input');
    t.style.height = 'auto';
    t.style.height = Math.min(t.scrollHeight + 2, 220) + 'px';
  }

  function init() {
    loadSettings();
    initPanel();
    setBusy(false);
    updateEmpty();

    const input = $('#input');
    $('#composer').addEventListener('submit', (e) => { e.preventDefault(); send(); });
    input.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      }
    });
    input.addEventListener('input', autosize);
    $('#stop').addEventListener('click', stop);
    $('#new-chat').addEventListener('click', newChat);
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && controller) { e.preventDefault(); stop(); }
    });

    loadModelName();
    input.focus();
  }

  init();
})();
