// HTTP hygiene with raw sockets and fetch: malformed input, body limits,
// slowloris-style partial requests, client disconnects (mid-stream and during
// prompt processing), the bounded queue (429), deadlines and SIGTERM draining.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startServer, client, api, raw, metrics, tmpDir, MODEL_NAME, SLOW, sleep } from './lib/server.mjs';

let srv;
before(async () => { srv = await startServer({ args: ['--idle-timeout', '2', '--prefill-chunk', '16'] }); });
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

const NO_EOS = { 0: -100 }; // keep generating: ban end-of-text

async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

test('malformed JSON, wrong shapes and empty bodies get 400 with an error object', async () => {
  for (const body of ['{"model":', '[1,2]', '', 'null', '{"model":"tiny","prompt":5}', '{"model":"tiny"}',
    '{"model":"tiny","messages":[{"role":"wizard","content":"x"}]}']) {
    const path = body.includes('messages') ? '/v1/chat/completions' : '/v1/completions';
    const r = await api(srv, 'POST', path, body);
    assert.equal(r.status, 400, `${body} -> ${r.text}`);
    assert.equal(r.json.error.type, 'invalid_request_error');
    assert.ok(r.json.error.message.length > 0);
  }
  const garbage = await raw(srv.port, 'HELLO WORLD\r\n\r\n', 3000);
  assert.match(garbage.text, /^HTTP\/1\.[01] 400/);
  assert.equal((await api(srv, 'GET', '/health')).status, 200);
});

test('huge bodies get 413 without the server reading them all', async () => {
  const declared = await raw(srv.port,
    'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n{"model"', 5000);
  assert.match(declared.text, /^HTTP\/1\.1 413/);
  assert.match(declared.text, /request_too_large/);
  // Chunked upload beyond the 4 MiB limit: counted, dropped, answered 413.
  const chunk = 'a'.repeat(1 << 20);
  const steps = [[0, 'POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n']];
  for (let i = 0; i < 5; i++) steps.push([0, `${chunk.length.toString(16)}\r\n${chunk}\r\n`]);
  steps.push([0, '0\r\n\r\n']);
  const chunked = await raw(srv.port, steps, 10000 * SLOW);
  assert.match(chunked.text, /^HTTP\/1\.1 413/);
  assert.equal((await api(srv, 'GET', '/health')).status, 200);
});

test('slowloris: partial requests neither block others nor stay open past --idle-timeout', async () => {
  const partial = [];
  for (let i = 0; i < 24; i++)
    partial.push(raw(srv.port, [[0, 'POST /v1/completions HTTP/1.1\r\nHost: x\r\n'], [300, 'X-Slow: 1\r\n']], 15000 * SLOW));
  await sleep(100);
  const t0 = Date.now();
  const ok = await client(srv).completions.create({ model: MODEL_NAME, prompt: 'hi', max_tokens: 2 });
  assert.equal(ok.choices.length, 1);
  assert.ok(Date.now() - t0 < 2000 * SLOW, 'a normal request was delayed by partial ones');
  const results = await Promise.all(partial);
  for (const r of results) assert.ok(r.closed, 'the server did not close an idle partial request');
});

test('a client disconnecting mid-stream stops its generation; its session keeps what was processed', async () => {
  const ac = new AbortController();
  const prompt = 'Stream then vanish';
  const r = await fetch(`${srv.base}/completions`, {
    method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL_NAME, prompt, max_tokens: 4000, stream: true, logit_bias: NO_EOS, session_id: 'dc-1' }),
  });
  const reader = r.body.getReader();
  let got = 0;
  while (got < 5) { const { value } = await reader.read(); got += (new TextDecoder().decode(value).match(/data: /g) || []).length; }
  const before = await metrics(srv);
  ac.abort();
  await waitFor(async () => (await metrics(srv)).metastate_active_sequences === 0, 3000 * SLOW, 'the stream to stop');
  const m = await metrics(srv);
  assert.ok(m.metastate_cancelled_total > before.metastate_cancelled_total);
  const s = await api(srv, 'GET', '/v1/sessions/dc-1');
  assert.ok(s.json.tokens > prompt.length && s.json.tokens < prompt.length + 4000, JSON.stringify(s.json));
  assert.equal(s.json.busy, false);
});

test('a client disconnecting during prompt processing stops it too', async () => {
  const prompt = 'abcdefgh '.repeat(24000 / SLOW); // ~10 s of prefill at 16 tokens per step
  const ac = new AbortController();
  const p = fetch(`${srv.base}/completions`, {
    method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL_NAME, prompt, max_tokens: 5, session_id: 'dc-2' }),
  }).catch(() => null);
  await waitFor(async () => (await metrics(srv)).metastate_active_sequences === 1, 3000 * SLOW, 'admission');
  await sleep(200);
  const before = await metrics(srv);
  const t0 = Date.now();
  ac.abort();
  await p;
  await waitFor(async () => (await metrics(srv)).metastate_active_sequences === 0, 2000 * SLOW, 'the prefill to stop');
  assert.ok(Date.now() - t0 < 2000 * SLOW);
  assert.ok((await metrics(srv)).metastate_cancelled_total > before.metastate_cancelled_total);
  const s = await api(srv, 'GET', '/v1/sessions/dc-2');
  assert.ok(s.json.tokens > 0 && s.json.tokens < Buffer.byteLength(prompt), JSON.stringify(s.json));
});

test('a full queue answers 429 with Retry-After; queued requests are served in turn', async () => {
  const s = await startServer({ args: ['--parallel', '1', '--queue', '1'] });
  try {
    const mk = (max) => api(s, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'q', max_tokens: max, logit_bias: NO_EOS });
    const long = mk(400 * 1);
    await waitFor(async () => (await metrics(s)).metastate_active_sequences === 1, 3000 * SLOW, 'first admitted');
    const queued = mk(3);
    await waitFor(async () => (await metrics(s)).metastate_queue_length === 1, 3000 * SLOW, 'second queued');
    const rejected = await mk(3);
    assert.equal(rejected.status, 429);
    assert.equal(rejected.headers.get('retry-after'), '1');
    assert.equal(rejected.json.error.code, 'queue_full');
    const [a, b] = await Promise.all([long, queued]);
    assert.equal(a.status, 200);
    assert.equal(b.status, 200);
    assert.equal((await metrics(s)).metastate_rejected_total, 1);
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('--timeout bounds a request: generation ends with finish_reason length', async () => {
  const s = await startServer({ args: ['--timeout', '1'] });
  try {
    const t0 = Date.now();
    const r = await client(s).completions.create({ model: MODEL_NAME, prompt: 'go', max_tokens: 4000,
      logit_bias: NO_EOS });
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.ok(r.usage.completion_tokens < 4000);
    assert.ok(Date.now() - t0 < 5000 * SLOW);
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('SIGTERM drains in-flight streams, refuses new work and persists sessions', async () => {
  const dir = tmpDir('drain');
  const s = await startServer({ args: ['--state-dir', dir] });
  const r = await fetch(`${s.base}/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL_NAME, prompt: 'drain me', max_tokens: 300, stream: true,
      logit_bias: NO_EOS, session_id: 'drained' }),
  });
  const reader = r.body.getReader();
  let text = new TextDecoder().decode((await reader.read()).value);
  const stopped = s.stop('SIGTERM');
  for (;;) { const { value, done } = await reader.read(); if (done) break; text += new TextDecoder().decode(value); }
  assert.match(text, /data: \[DONE\]\n\n$/);
  const events = text.split('\n\n').filter((e) => e.startsWith('data: {'));
  assert.equal(JSON.parse(events.at(-1).slice(6)).choices[0].finish_reason, 'length');
  const e = await stopped;
  assert.equal(e.code, 0, s.stderr());
  assert.ok(existsSync(join(dir, 'drained.state')));
  await assert.rejects(fetch(`${s.url}/health`, { signal: AbortSignal.timeout(2000) }));
});
