// The API as the signed-in user: every request carries the user's token, so RBAC decides.
// The token lives in sessionStorage only: it ends with the tab, never in localStorage, a cookie or a URL.

const KEY = 'cdi-console-token';

export function token() { return sessionStorage.getItem(KEY); }
export function setToken(t) { if (t) sessionStorage.setItem(KEY, t); else sessionStorage.removeItem(KEY); }

export class ApiError extends Error {
  constructor(status, message, reason) {
    super(message);
    this.status = status;
    this.reason = reason || '';
  }
}

// A refusal in words a person can act on: kube's Status message, prefixed by what it means.
export function describe(err) {
  if (!(err instanceof ApiError)) return String(err && err.message || err);
  if (err.status === 403) return `Not allowed: ${err.message}`;
  if (err.status === 401) return `Signed out: the token was not accepted (${err.message}). Sign in again.`;
  return err.message;
}

async function errorOf(resp) {
  const text = await resp.text();
  try {
    const status = JSON.parse(text);
    if (status && status.message) return new ApiError(resp.status, status.message, status.reason);
  } catch (_) { /* not a Status */ }
  return new ApiError(resp.status, text.trim() || `${resp.status} ${resp.statusText}`);
}

// signal (an AbortSignal) cancels the request: a view left behind must not be drawn by a late answer.
export async function request(method, path, body, signal) {
  const headers = { Accept: 'application/json', Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                   cache: 'no-store', credentials: 'omit', signal });
  if (!resp.ok) throw await errorOf(resp);
  const text = await resp.text();
  return text ? JSON.parse(text) : {};
}

// A list kept current by a watch (a streaming response of one JSON event per line), not by polling.
// onChange(items) runs after each change; waitFor(name, test) resolves when an object passes test.
// Once stopped, its requests are cancelled and nothing it still receives reaches onChange or onError:
// a slow answer for the namespace just left never draws over the one now shown.
export class Collection {
  constructor(path, onChange, onError) {
    this.path = path;
    this.abort = new AbortController();
    const live = (fn) => (...args) => { if (!this.abort.signal.aborted) fn(...args); };
    this.onChange = live(onChange);
    this.onError = live(onError);
    this.items = new Map();
    this.waiters = [];
  }

  start() { this._run(); return this; }
  stop() { this.abort.abort(); for (const w of this.waiters) w.reject(new Error('the view changed')); this.waiters = []; }

  waitFor(name, test) {
    const now = this.items.get(name);
    if (now && test(now)) return Promise.resolve(now);
    return new Promise((resolve, reject) => this.waiters.push({ name, test, resolve, reject }));
  }

  _changed() {
    this.onChange([...this.items.values()]);
    this.waiters = this.waiters.filter((w) => {
      const obj = this.items.get(w.name);
      if (obj && w.test(obj)) { w.resolve(obj); return false; }
      return true;
    });
  }

  async _run() {
    const signal = this.abort.signal;
    let delay = 500;
    while (!signal.aborted) {
      try {
        const list = await request('GET', this.path, undefined, signal);
        if (signal.aborted) return;
        this.items = new Map((list.items || []).map((o) => [o.metadata.name, o]));
        this.onError(null);
        this._changed();
        await this._watch(list.metadata.resourceVersion, signal);
        delay = 500;
      } catch (err) {
        if (signal.aborted) return;
        this.onError(err);
        if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
          this.items = new Map();
          this._changed();
          delay = Math.min(delay * 2, 10000);  // rights may be granted later: ask again, slowly
        }
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  async _watch(resourceVersion, signal) {
    const sep = this.path.includes('?') ? '&' : '?';
    const url = `${this.path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(resourceVersion)}`;
    const resp = await fetch(url, { headers: { Authorization: `Bearer ${token()}`, Accept: 'application/json' },
                                    signal, cache: 'no-store', credentials: 'omit' });
    if (!resp.ok) throw await errorOf(resp);
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (signal.aborted) return;
      if (done) return;  // the server ended the watch (its timeoutSeconds, or a restart): list again
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (!line) continue;
        const event = JSON.parse(line);
        if (event.type === 'ERROR') {
          if (event.object && event.object.code === 410) return;  // too old: list again
          throw new ApiError(event.object && event.object.code || 500, event.object && event.object.message || 'watch error');
        }
        if (event.type === 'BOOKMARK') continue;
        const obj = event.object;
        if (event.type === 'DELETED') this.items.delete(obj.metadata.name);
        else this.items.set(obj.metadata.name, obj);
        this._changed();
      }
    }
  }
}

// Kubernetes quantities to bytes (enough for sizes people type: 10Gi, 500M, 1e9, 1073741824).
export function parseQuantity(text) {
  const m = /^\s*([0-9.]+(?:e[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?\s*$/.exec(String(text || ''));
  if (!m) return NaN;
  const mult = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15 };
  return Number(m[1]) * (m[2] ? mult[m[2]] : 1);
}

export function formatBytes(n) {
  if (!Number.isFinite(n)) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600); const m = Math.floor((s % 3600) / 60); const r = s % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(r).padStart(2, '0')}` : `${m}:${String(r).padStart(2, '0')}`;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}
