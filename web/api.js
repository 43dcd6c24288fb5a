// The server's API as the page uses it: same origin, Bearer key from
// sessionStorage, OpenAI-style errors turned into readable messages.
import { sseData } from './sse.js';

const KEY = 'metastate.apiKey';

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) || '',
  set: (k) => (k ? sessionStorage.setItem(KEY, k) : sessionStorage.removeItem(KEY)),
};

/** An HTTP error with the server's message. */
export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code || null;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const k = apiKey.get();
  if (k) h.Authorization = `Bearer ${k}`;
  return h;
}

async function errorOf(r) {
  let msg = '', code = null;
  try {
    const j = JSON.parse(await r.text());
    msg = j?.error?.message || '';
    code = j?.error?.code || null;
  } catch { /* not JSON */ }
  const what = {
    401: 'The server rejected the API key',
    404: 'Not found',
    409: 'Busy',
    413: 'Too large',
    429: 'The server is busy',
    503: 'The server is not ready',
  }[r.status] || `HTTP ${r.status}`;
  return new ApiError(r.status, msg ? `${what}: ${msg}` : `${what}.`, code);
}

/** fetch() on the API; throws ApiError unless 2xx. */
export async function request(method, path, { json, body, signal, accept } = {}) {
  const h = headers(json !== undefined ? { 'Content-Type': 'application/json' } : {});
  if (accept) h.Accept = accept;
  let r;
  try {
    r = await fetch(path, { method, headers: h, body: json !== undefined ? JSON.stringify(json) : body, signal });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'Cannot reach the server (is `metastate serve` running?).');
  }
  if (!r.ok) throw await errorOf(r);
  return r;
}

export const getJSON = async (path) => (await request('GET', path)).json();

/**
 * Streams a completion (kind 'chat' or 'completion'). Calls onText(delta)
 * per content chunk; resolves to {usage, finish}. Aborting signal rejects
 * with an AbortError; the server then stops generating.
 */
export async function stream(kind, body, { signal, onText }) {
  const path = kind === 'chat' ? '/v1/chat/completions' : '/v1/completions';
  const r = await request('POST', path, {
    json: { ...body, stream: true, stream_options: { include_usage: true } },
    signal,
    accept: 'text/event-stream',
  });
  let usage = null, finish = null;
  for await (const data of sseData(r.body)) {
    if (data === '[DONE]') break;
    let chunk;
    try { chunk = JSON.parse(data); } catch { continue; }
    if (chunk.error) throw new ApiError(500, `The server stopped the reply: ${chunk.error.message || 'error'}`);
    if (chunk.usage) usage = chunk.usage;
    const c = chunk.choices?.[0];
    if (!c) continue;
    const text = kind === 'chat' ? c.delta?.content : c.text;
    if (text) onText(text);
    if (c.finish_reason) finish = c.finish_reason;
  }
  return { usage, finish };
}
