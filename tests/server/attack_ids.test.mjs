// Session ids from every door (body session_id, X-Session-ID, the path of
// /v1/sessions/{id} and /v1/sessions/{id}/state) pass the same check: ids that
// are not 1..128 characters of [A-Za-z0-9._:-] (or are "." / "..") get a 400
// invalid_session_id, never a 5xx, never a file in --state-dir, never another
// session's record (issue 9, bugs 2-4). Requests go over raw sockets so that
// nothing normalizes the path ("..", "%00") before the server sees it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { startServer, api, raw, tmpDir, MODEL_NAME } from './lib/server.mjs';

const dir = tmpDir('ids');
let srv, stateBody;
before(async () => {
  srv = await startServer({ args: ['--state-dir', dir] });
  const r = await api(srv, 'POST', '/v1/chat/completions',
    { model: MODEL_NAME, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, session_id: 'a' });
  assert.equal(r.status, 200, r.text);
  const ex = await api(srv, 'GET', '/v1/sessions/a/state');
  assert.equal(ex.status, 200);
  stateBody = Buffer.from(ex.bytes);
});
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

/** One raw HTTP/1.1 request; resolves {status, body}. */
async function rawReq(method, path, { headers = '', body = null } = {}) {
  const head = Buffer.from(`${method} ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${headers}` +
    (body ? `Content-Length: ${body.length}\r\nContent-Type: application/octet-stream\r\n` : '') + '\r\n', 'latin1');
  const { text } = await raw(srv.port, body ? Buffer.concat([head, body]) : head, 15000);
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
  const i = text.indexOf('\r\n\r\n');
  return { status: m ? Number(m[1]) : 0, body: i >= 0 ? text.slice(i + 4) : '', text };
}

const BAD_PATH_IDS = ['..', '.', 'a%20b', '%0d%0aX-Inj:%201', '%C3%A9', 'x'.repeat(129), 'y'.repeat(150),
  'z'.repeat(300), '%ff', 'a%00b', '%00', 'a;b', ''];

function stateFiles() { return readdirSync(dir).filter((f) => !f.startsWith('.')).sort(); }

test('PUT /v1/sessions/{bad id}/state: 400 invalid_session_id and no file', async () => {
  const before = stateFiles();
  for (const id of BAD_PATH_IDS) {
    const r = await rawReq('PUT', `/v1/sessions/${id}/state`, { body: stateBody });
    assert.equal(r.status, 400, `${id}: ${r.text.slice(0, 300)}`);
    assert.equal(JSON.parse(r.body).error.code, 'invalid_session_id', id);
  }
  assert.deepEqual(stateFiles(), before);
  // The same id that is valid (128 characters) is accepted.
  const ok = await rawReq('PUT', `/v1/sessions/${'w'.repeat(128)}/state`, { body: stateBody });
  assert.equal(ok.status, 200, ok.text.slice(0, 300));
});

test('GET and DELETE /v1/sessions/{bad id}: 400, never 5xx, nothing deleted', async () => {
  for (const id of BAD_PATH_IDS) {
    for (const [m, suffix] of [['GET', ''], ['DELETE', ''], ['GET', '/state']]) {
      const r = await rawReq(m, `/v1/sessions/${id}${suffix}`);
      assert.equal(r.status, 400, `${m} ${id}${suffix}: ${r.text.slice(0, 300)}`);
    }
  }
  // A NUL in the path does not turn into session "a".
  const d = await rawReq('DELETE', '/v1/sessions/a%00b/state');
  assert.ok(d.status >= 400 && d.status < 500, d.text);
  const d2 = await rawReq('DELETE', '/v1/sessions/a%00b');
  assert.equal(d2.status, 400, d2.text);
  const still = await api(srv, 'GET', '/v1/sessions/a');
  assert.equal(still.status, 200, 'session a survived');
  const list = await api(srv, 'GET', '/v1/sessions');
  assert.equal(list.status, 200);
  for (const s of list.json.data) assert.match(s.id, /^[A-Za-z0-9._:-]{1,128}$/);
});

test('X-Session-ID and body session_id get the same check', async () => {
  const chat = (extraHeaders, sid) => {
    const body = { model: MODEL_NAME, messages: [{ role: 'user', content: 'x' }], max_tokens: 1 };
    if (sid !== undefined) body.session_id = sid;
    const b = Buffer.from(JSON.stringify(body));
    return rawReq('POST', '/v1/chat/completions', {
      headers: `Content-Type: application/json\r\n${extraHeaders}`, body: b });
  };
  for (const sid of ['..', '.', 'a b', 'é', 'q'.repeat(129)]) {
    const r = await chat('', sid);
    assert.equal(r.status, 400, `${sid}: ${r.text.slice(0, 200)}`);
    assert.equal(JSON.parse(r.body).error.param, 'session_id');
  }
  for (const h of ['..', '.', 'q'.repeat(129), 'a b', 'a%00b', '\xff']) {
    const r = await chat(`X-Session-ID: ${h}\r\n`);
    assert.equal(r.status, 400, `header ${JSON.stringify(h)}: ${r.text.slice(0, 200)}`);
    assert.equal(JSON.parse(r.body).error.code, 'invalid_session_id');
  }
  // (A raw NUL byte inside a header value is cut off by libmicrohttpd 0.9.75
  // before the application sees the value, so it cannot be told apart here.)
});
