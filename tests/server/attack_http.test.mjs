// HTTP-side leaks (issue 9, bugs 10 and 11): errors for uploaded states do
// not show server paths and leave no staging file; with --api-key, unknown
// routes and wrong methods answer 401 like every other route, so routes
// cannot be enumerated without the key; every answer the server writes
// itself is an OpenAI error object.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { startServer, api, MODEL_NAME } from './lib/server.mjs';

const servers = [];
after(async () => { for (const s of servers) assert.equal((await s.stop()).code, 0, s.stderr()); });

const staging = () => readdirSync(tmpdir()).filter((f) => f.startsWith('metastate-import')).sort();

test('a bad state upload: 400 without server paths, nothing staged on disk', async () => {
  const srv = await startServer();
  servers.push(srv);
  const before = staging();
  const bodies = [Buffer.from('not a tensor file at all'), Buffer.alloc(0), Buffer.from([8, 0, 0, 0, 0, 0, 0, 0, 123, 125]),
    (() => { const h = Buffer.from('{"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'); const b = Buffer.alloc(8 + h.length + 4); b.writeBigUInt64LE(BigInt(h.length)); h.copy(b, 8); return b; })()];
  for (const b of bodies) {
    const r = await api(srv, 'PUT', '/v1/sessions/up/state', b, { 'Content-Type': 'application/octet-stream' });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.param, 'state');
    assert.doesNotMatch(r.json.error.message, /\/tmp|\/proc|metastate-import|\/fd\//, r.json.error.message);
    assert.ok(r.json.error.message.length > 10, r.json.error.message);
  }
  assert.deepEqual(staging(), before);
});

test('with --api-key, unknown routes and wrong methods are 401 too; with the key 404/405', async () => {
  const srv = await startServer({ args: ['--api-key', 'sekret'] });
  servers.push(srv);
  const key = { Authorization: 'Bearer sekret' };
  const probes = [['GET', '/nope'], ['GET', '/v1/secret-admin'], ['DELETE', '/v1/models'], ['POST', '/metrics'],
    ['PUT', '/v1/completions'], ['GET', '/v1/sessions/x/nope']];
  for (const [m, p] of probes) {
    const r = await api(srv, m, p);
    assert.equal(r.status, 401, `${m} ${p}: ${r.text}`);
    assert.equal(r.json.error.type, 'authentication_error');
    const k = await api(srv, m, p, undefined, key);
    assert.ok(k.status === 404 || k.status === 405, `${m} ${p} with key: ${k.status}`);
    assert.ok(k.json.error.message, k.text);
  }
  assert.equal((await api(srv, 'GET', '/health')).status, 200);
  const ok = await api(srv, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'x', max_tokens: 1 }, key);
  assert.equal(ok.status, 200);
});
