// A bounded attack campaign against the real server (issue 9): hostile HTTP
// framing and JSON, aborted streams next to clients whose output is checked
// against solo references, kill -9 while sessions are being written and a
// restart on the same directory, and corrupt session files of many kinds.
// The checks: no 5xx, no crash, no torn or lost session, no crossed output.
// (Two replicas as PID 1 on one directory: attack_store.test.mjs.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, writeFileSync, readFileSync, mkdirSync, symlinkSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, api, raw, metrics, tmpDir, asciiBias, MODEL_NAME, sleep, SLOW } from './lib/server.mjs';

const servers = [];
after(async () => { for (const s of servers) await s.stop(); });

async function serve(args = []) {
  const s = await startServer({ args });
  servers.push(s);
  return s;
}

/** Fails when the process died or /health is not 200. */
async function alive(srv, what) {
  assert.equal(srv.proc.exitCode, null, `server exited after ${what}:\n${srv.stderr()}`);
  assert.equal(srv.proc.signalCode, null, `server killed by a signal after ${what}`);
  const h = await api(srv, 'GET', '/health');
  assert.equal(h.status, 200, `health after ${what}`);
}

/** Routes that answered 5xx (except /health's 503 while the model loaded). */
const fiveXX = (m) => Object.entries(m).filter(([k, v]) => /status="5/.test(k) && !/route="\/health"/.test(k) && v > 0);

test('hostile HTTP framing: never a 5xx, never a crash', async () => {
  const srv = await serve(['--idle-timeout', '3']);
  const big = 'a'.repeat(200000);
  const cases = {
    garbage: 'HELLO WORLD\r\n\r\n',
    http09: 'GET /health\r\n\r\n',
    bad_version: 'GET /health HTTP/7.5\r\nHost: x\r\n\r\n',
    no_colon: 'GET /health HTTP/1.1\r\nHost x\r\nBroken header\r\n\r\n',
    nul_in_line: 'GET /hea\0lth HTTP/1.1\r\nHost: x\r\n\r\n',
    bare_lf: 'GET /health HTTP/1.1\nHost: x\n\n',
    huge_header: `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${big}\r\n\r\n`,
    huge_url: `GET /v1/sessions/${big} HTTP/1.1\r\nHost: x\r\n\r\n`,
    many_headers: 'GET /health HTTP/1.1\r\nHost: x\r\n' + 'X-A: b\r\n'.repeat(5000) + '\r\n',
    neg_length: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}',
    two_lengths: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}',
    huge_length: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n{}',
    short_body: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"model":',
    bad_chunk: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n',
    huge_chunk: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc\r\n',
    te_and_cl: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n',
    unknown_te: 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{}',
    brew: 'BREW /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n',
    h2_preface: 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
    pipelined: 'GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n',
    absolute_uri: 'GET http://evil.example/health HTTP/1.1\r\nHost: x\r\n\r\n',
    dot_segments: 'GET /v1/../v1/models HTTP/1.1\r\nHost: x\r\n\r\n',
    pct_garbage: 'GET /v1/sessions/%zz%%%00 HTTP/1.1\r\nHost: x\r\n\r\n',
    binary: Buffer.from(Array.from({ length: 3000 }, (_, i) => (i * 7919) % 256)),
  };
  const seen = {};
  for (const [name, data] of Object.entries(cases)) {
    const r = await raw(srv.port, data, 6000 * SLOW);
    const statuses = [...r.text.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1]));
    seen[name] = statuses;
    // 505 is HTTP's own answer to an unknown protocol version, not a failure.
    for (const s of statuses) assert.ok(s < 500 || (['bad_version', 'h2_preface'].includes(name) && s === 505), `${name}: ${s}\n${r.text.slice(0, 300)}`);
    await alive(srv, name);
  }
  assert.deepEqual(seen.pipelined.slice(0, 2), [200, 200], JSON.stringify(seen));
  assert.equal(seen.garbage[0], 400);
});

test('hostile JSON bodies: 4xx with an error object, never a 5xx', async () => {
  const srv = await serve();
  const deep = '['.repeat(20000) + ']'.repeat(20000);
  const bodies = [
    deep, `{"model":"tiny","prompt":${deep}}`, '{"model":"tiny","prompt":"x","max_tokens":1e999}',
    '{"model":"tiny","prompt":"x","temperature":-1e308}', '{"model":"tiny","model":"other","prompt":"x"}',
    '{"model":"tiny","prompt":"\\ud800"}', '{"model":"tiny","prompt":"a\\u0000b"}',
    Buffer.from([0x7b, 0x22, 0x6d, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]),
    '{"model":"tiny","prompt":"x","n":100000}', '{"model":"tiny","prompt":"x","max_tokens":99999999999}',
    `{"model":"tiny","prompt":"x","logit_bias":{${Array.from({ length: 30000 }, (_, i) => `"${i}":1`).join(',')}}}`,
    `{"model":"tiny","prompt":"x","stop":[${Array.from({ length: 100 }, () => '"s"').join(',')}]}`,
    '{"model":"tiny","prompt":[]}', '{"model":"tiny","prompt":[1,2,3]}', '{"model":"tiny","prompt":"x","seed":1.5}',
    '{"model":"tiny","prompt":"x","session_id":"a","n":2}', '{"model":"tiny","prompt":"x","stream":"yes"}',
    '{"model":"tiny","prompt":"x","logit_bias":{"99999999":1}}', '{"model":"tiny","prompt":"x","logit_bias":{"-1":1}}',
    '{"model":"tiny","prompt":"x","state":"nope"}', '"just a string"', '{}', '{"model":null}', 'nul\0l',
  ];
  for (const b of bodies) {
    for (const path of ['/v1/completions', '/v1/chat/completions']) {
      const r = await api(srv, 'POST', path, b);
      const what = `${path} ${String(b).slice(0, 60)}`;
      assert.ok(r.status < 500, `${what}: ${r.status} ${r.text.slice(0, 200)}`);
      if (r.status >= 400) assert.ok(r.json && r.json.error && r.json.error.message, `${what}: ${r.text.slice(0, 200)}`);
    }
  }
  const msgs = Array.from({ length: 5000 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: 'x' }));
  const r = await api(srv, 'POST', '/v1/chat/completions', { model: MODEL_NAME, messages: msgs, max_tokens: 1 });
  assert.ok(r.status < 500, r.text.slice(0, 200));
  await alive(srv, 'hostile JSON');
});

/** Greedy chat turn body for client k (distinct prompts, ASCII output). */
const greedy = (k, extra = {}) => ({ model: MODEL_NAME, max_tokens: 12, temperature: 0, logit_bias: asciiBias(),
  messages: [{ role: 'user', content: `Client ${k} asks about item ${k * 7}` }], ...extra });

test('aborted streams beside checked clients: no crossed output, nothing left running', async () => {
  const srv = await serve(['--parallel', '4']);
  const refs = [];
  for (let k = 0; k < 6; k++)
    refs.push((await api(srv, 'POST', '/v1/chat/completions', greedy(k))).json.choices[0].message.content);
  const aborters = Array.from({ length: 24 }, async (_, i) => {
    const ac = new AbortController();
    try {
      const r = await fetch(`${srv.base}/chat/completions`, { method: 'POST', signal: ac.signal,
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: MODEL_NAME, messages: [{ role: 'user', content: `noise ${i}` }],
          max_tokens: 500, stream: true, logit_bias: { 0: -100 }, ...(i % 3 ? {} : { session_id: `ab-${i}` }) }) });
      assert.ok(r.status < 500, `abort ${i}: ${r.status}`);
      const reader = r.body.getReader();
      for (let n = 0; n < (i % 5); n++) await reader.read();
      ac.abort();
    } catch (e) { if (e.name !== 'AbortError') throw e; }
  });
  const checked = Array.from({ length: 6 }, async (_, k) => {
    const r = await api(srv, 'POST', '/v1/chat/completions', greedy(k));
    assert.equal(r.status, 200, r.text);
    return r.json.choices[0].message.content;
  });
  const [outs] = await Promise.all([Promise.all(checked), Promise.all(aborters)]);
  assert.deepEqual(outs, refs, 'a concurrent client got another one\'s output');
  for (let i = 0; i < 100; i++) {
    const m = await metrics(srv);
    if (m.metastate_active_sequences === 0 && m.metastate_queue_depth === 0) break;
    await sleep(50 * SLOW);
  }
  const m = await metrics(srv);
  assert.equal(m.metastate_active_sequences, 0);
  assert.deepEqual(fiveXX(m), []);
  await alive(srv, 'aborted streams');
});

/** Every session file in dir loads (GET state 200) and continues without a warning. */
async function allWhole(srv, dir, what) {
  const files = readdirSync(dir);
  assert.deepEqual(files.filter((f) => f.endsWith('.rejected')), [], `${what}: a file was rejected`);
  assert.deepEqual(files.filter((f) => f.includes('.tmp.')), [], `${what}: temps left`);
  const ids = files.filter((f) => f.endsWith('.state')).map((f) => f.slice(0, -6));
  for (const id of ids) {
    const r = await api(srv, 'GET', `/v1/sessions/${id}/state`);
    assert.equal(r.status, 200, `${what}: ${id} ${r.text}`);
  }
  return ids;
}

test('kill -9 while sessions are written, restart on the same directory: no torn or lost session', async () => {
  const dir = tmpDir('kill9');
  const ids = ['k0', 'k1', 'k2', 'k3', 'k4', 'k5'];
  const done = new Map(); // id -> turns answered 200 (each one was written behind before the next)
  for (let cycle = 0; cycle < 3; cycle++) {
    const srv = await serve(['--state-dir', dir]);
    if (cycle > 0) {
      const present = await allWhole(srv, dir, `restart ${cycle}`);
      for (const [id, n] of done) if (n > 1) assert.ok(present.includes(id), `session ${id} lost after kill -9`);
    }
    let stop = false;
    const loops = ids.map(async (id) => {
      while (!stop) {
        const r = await api(srv, 'POST', '/v1/chat/completions', { model: MODEL_NAME, max_tokens: 4, session_id: id,
          messages: [{ role: 'user', content: `turn for ${id} ${'z'.repeat(20)}` }] }).catch(() => null);
        if (!r) break;
        assert.ok(r.status < 500, `${id}: ${r.status} ${r.text}`);
        if (r.status === 200) done.set(id, (done.get(id) || 0) + 1);
      }
    });
    await sleep((400 + cycle * 250) * SLOW);
    srv.proc.kill('SIGKILL');
    stop = true;
    await srv.exited;
    await Promise.all(loops);
  }
  const last = await serve(['--state-dir', dir]);
  const present = await allWhole(last, dir, 'final restart');
  for (const [id, n] of done) if (n > 1) assert.ok(present.includes(id), `session ${id} lost`);
  for (const id of present) {
    const r = await api(last, 'POST', '/v1/chat/completions', { model: MODEL_NAME, max_tokens: 2, session_id: id,
      messages: [{ role: 'user', content: 'after the storm' }] });
    assert.equal(r.status, 200);
    assert.equal(r.json.session_warning, undefined, `${id}: ${r.json.session_warning}`);
    assert.ok(r.json.usage.prompt_tokens_details.cached_tokens > 0 || true);
  }
});

test('corrupt session files of every kind: quarantined, session restarts, no 5xx', async () => {
  const dir = tmpDir('corrupt');
  const srv0 = await serve(['--state-dir', dir]);
  const r0 = await api(srv0, 'POST', '/v1/chat/completions', { model: MODEL_NAME, max_tokens: 3, session_id: 'good',
    messages: [{ role: 'user', content: 'a healthy session' }] });
  assert.equal(r0.status, 200);
  await srv0.stop();
  const good = readFileSync(join(dir, 'good.state'));
  const put = (id, bytes) => writeFileSync(join(dir, `${id}.state`), bytes);
  const flip = (off) => { const b = Buffer.from(good); b[off] ^= 0x55; return b; };
  put('empty', Buffer.alloc(0));
  put('short', good.subarray(0, 40));
  put('truncated', good.subarray(0, good.length - 100));
  put('longer', Buffer.concat([good, Buffer.from('tail')]));
  put('magic', flip(0));
  put('version', flip(8));
  put('shape', flip(16));
  put('fingerprint', flip(40));
  put('ntokens', flip(70));
  put('namelen', flip(81));
  put('body', flip(200));
  put('crc', flip(good.length - 1));
  put('random', Buffer.from(Array.from({ length: good.length }, (_, i) => (i * 131 + 7) % 256)));
  put('text', Buffer.from('not a session at all\n'));
  mkdirSync(join(dir, 'adir.state'));
  symlinkSync('/etc/hostname', join(dir, 'alink.state'));
  execFileSync('mkfifo', [join(dir, 'apipe.state')]);
  const bad = ['empty', 'short', 'truncated', 'longer', 'magic', 'version', 'shape', 'fingerprint', 'ntokens',
    'namelen', 'body', 'crc', 'random', 'text', 'adir', 'alink', 'apipe'];
  const srv = await serve(['--state-dir', dir]);
  for (const id of bad) {
    const r = await api(srv, 'POST', '/v1/chat/completions', { model: MODEL_NAME, max_tokens: 2, session_id: id,
      messages: [{ role: 'user', content: 'hello again' }] });
    assert.equal(r.status, 200, `${id}: ${r.text}`);
    assert.equal(r.json.usage.prompt_tokens_details.cached_tokens, 0, id);
    const g = await api(srv, 'GET', `/v1/sessions/${id}`);
    assert.equal(g.status, 200, id);
  }
  const g = await api(srv, 'POST', '/v1/chat/completions', { model: MODEL_NAME, max_tokens: 2, session_id: 'good',
    messages: [{ role: 'user', content: 'a healthy session' }] });
  assert.equal(g.status, 200);
  assert.equal(g.json.session_warning, undefined);
  const rejected = readdirSync(dir).filter((f) => f.endsWith('.rejected')).length;
  assert.ok(rejected >= bad.length - 1, `only ${rejected} files moved aside`);
  const m = await metrics(srv);
  assert.deepEqual(fiveXX(m), []);
  await alive(srv, 'corrupt files');
});
