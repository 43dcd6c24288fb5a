// Sessions in Redis (--state-store): a real redis-server (Debian's) on a free
// loopback port, started here in a temporary directory, and two `metastate
// serve` replicas on it. Any replica serves any turn; one turn at a time per
// session across replicas (a lease in Redis); a replica killed mid-turn frees
// its sessions when its lease expires; an unreachable store is a clear 503
// for session requests only; corrupt and foreign values restart the session.
// Responses API chains (previous_response_id, retrieve, input items, delete)
// work from any replica: the records are in Redis too.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import net from 'node:net';
import { streamText } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { startServer, client, api, metrics, tmpDir, tinyModel, asciiBias, MODEL_NAME, sleep, SLOW }
  from './lib/server.mjs';

const LEASE_MS = 1500;
const dir = tmpDir('redis');
let redis = null;
let redisPort = 0;
const servers = [];

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)); });
  });
}

/** Starts redis-server on redisPort (append-only file in dir, so a restart keeps the data). */
async function startRedis() {
  const proc = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1',
    '--dir', dir, '--save', '', '--appendonly', 'yes', '--appendfsync', 'always'],
  { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  proc.stderr.on('data', (d) => { err += d; });
  const exited = new Promise((r) => proc.on('exit', r));
  for (let i = 0; i < 200; i++) {
    try { if (cli('PING').trim() === 'PONG') return { proc, exited }; } catch {}
    await sleep(25);
  }
  proc.kill('SIGKILL');
  throw new Error(`redis-server did not start (is Debian's redis-server installed?): ${err}`);
}

async function stopRedis() {
  if (!redis) return;
  redis.proc.kill('SIGTERM');
  await redis.exited;
  redis = null;
}

/** redis-cli against the test's redis (args as an array; stdin optional). */
function cli(...args) {
  return execFileSync('redis-cli', ['-p', String(redisPort), ...args], { encoding: 'utf8', timeout: 10000 });
}

const storeUrl = () => `redis://127.0.0.1:${redisPort}/0`;
const replicaArgs = () => ['--state-store', storeUrl(), '--lease-ms', String(LEASE_MS * SLOW)];

before(async () => {
  redisPort = await freePort();
  redis = await startRedis();
});

after(async () => {
  for (const s of servers) s.stop('SIGKILL');
  await stopRedis();
});

async function replica(extra = []) {
  const s = await startServer({ args: [...replicaArgs(), ...extra] });
  servers.push(s);
  return s;
}

async function chat(srv, messages, sid, extra = {}) {
  const body = { model: MODEL_NAME, messages, max_tokens: 6, temperature: 0, logit_bias: asciiBias(), ...extra };
  if (sid) body.session_id = sid;
  return api(srv, 'POST', '/v1/chat/completions', body);
}

const QUESTIONS = ['Hello there', 'What is up', 'Tell me more', 'Why so', 'And then',
  'Really now', 'Go on', 'Is that all', 'One more', 'Last one'];

test('two replicas on one redis: a 10-turn chat alternating at random equals one server, every later turn cached', async () => {
  const a = await replica(), b = await replica();
  const one = await startServer(); // one server, sessions in memory: the reference
  servers.push(one);
  // A fixed pseudo-random order that visits both replicas (seeded: reproducible).
  let seed = 12345;
  const pick = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed & 1024 ? a : b; };
  let msgs = [], ref = [];
  const seen = new Set();
  for (let i = 0; i < QUESTIONS.length; i++) {
    const srv = i === 1 ? (seen.has(a) ? b : a) : pick(); // the second turn always switches
    seen.add(srv);
    msgs.push({ role: 'user', content: QUESTIONS[i] });
    ref.push({ role: 'user', content: QUESTIONS[i] });
    const r = await chat(srv, msgs, 'chat10');
    const o = await chat(one, ref, 'chat10');
    assert.equal(r.status, 200, r.text);
    assert.equal(o.status, 200, o.text);
    const text = r.json.choices[0].message.content;
    assert.equal(text, o.json.choices[0].message.content, `turn ${i + 1}`);
    const cached = r.json.usage.prompt_tokens_details.cached_tokens;
    if (i === 0) assert.equal(cached, 0);
    else assert.ok(cached > 0, `turn ${i + 1} on ${srv === a ? 'A' : 'B'}: cached_tokens ${cached}`);
    assert.equal(cached, o.json.usage.prompt_tokens_details.cached_tokens, `turn ${i + 1} cached`);
    msgs.push({ role: 'assistant', content: text });
    ref.push({ role: 'assistant', content: o.json.choices[0].message.content });
  }
  assert.ok(seen.has(a) && seen.has(b));
  // Both replicas see the same session in the store.
  const ia = await api(a, 'GET', '/v1/sessions/chat10'), ib = await api(b, 'GET', '/v1/sessions/chat10');
  assert.equal(ia.status, 200, ia.text);
  assert.equal(ia.json.tokens, ib.json.tokens);
  assert.ok(ia.json.tokens > 0);
  const ma = await metrics(a), mb = await metrics(b);
  assert.ok(ma.metastate_store_misses_total + mb.metastate_store_misses_total > 0, 'loads from the store');
  assert.equal(ma.metastate_store_up, 1);
  assert.ok(ma.metastate_store_operation_seconds_count > 0);
  const h = await api(a, 'GET', '/health');
  assert.equal(h.json.store, 'ok', h.text);
  // Delete through one replica: gone for both.
  assert.equal((await api(b, 'DELETE', '/v1/sessions/chat10')).status, 200);
  assert.equal((await api(a, 'GET', '/v1/sessions/chat10')).status, 404);
  // A clean shutdown (the sanitizer build checks for leaks at exit).
  for (const s of [a, b, one]) assert.equal((await s.stop()).code, 0, s.stderr());
});

test('the same session sent to both replicas at once: both succeed, the second continues the first', async () => {
  const a = await replica(), b = await replica();
  // Completions of 200 tokens (end-of-text banned, no chat stop): each turn
  // lasts long enough that two requests sent together overlap even on a
  // loaded host, so the second really waits for the first's lease.
  const body = { model: MODEL_NAME, prompt: 'Both at once', max_tokens: 200, temperature: 0,
    session_id: 'twice', logit_bias: { ...asciiBias(), 0: -100 } };
  const complete = (srv) => api(srv, 'POST', '/v1/completions', body);
  const [ra, rb] = await Promise.all([complete(a), complete(b)]);
  assert.equal(ra.status, 200, ra.text);
  assert.equal(rb.status, 200, rb.text);
  const cached = [ra, rb].map((r) => r.json.usage.prompt_tokens_details.cached_tokens).sort((x, y) => x - y);
  // The first ran on an empty session; the second found the first's result,
  // as on one server.
  const one = await startServer();
  servers.push(one);
  const [o1, o2] = await Promise.all([complete(one), complete(one)]);
  const ref = [o1, o2].map((r) => r.json.usage.prompt_tokens_details.cached_tokens).sort((x, y) => x - y);
  assert.deepEqual(cached, ref);
  assert.equal(cached[0], 0);
  assert.ok(cached[1] > 0, JSON.stringify(cached));
  const waits = (await metrics(a)).metastate_store_lease_waits_total + (await metrics(b)).metastate_store_lease_waits_total;
  assert.ok(waits > 0, 'one of them waited for the lease');
  await a.stop('SIGKILL'); await b.stop('SIGKILL'); await one.stop('SIGKILL');
});

async function streamUntil(srv, body, n) {
  const r = await fetch(`${srv.url}/v1/completions`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...body, stream: true }),
  });
  assert.equal(r.status, 200);
  const reader = r.body.getReader();
  let got = 0, text = '';
  while (got < n) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    got = (text.match(/"text"/g) || []).length;
  }
  return { reader, got };
}

test('kill -9 of the replica holding the lease mid-stream: the other serves the next turn from the last stored version', async () => {
  const a = await replica(), b = await replica();
  const base = { model: MODEL_NAME, temperature: 0, session_id: 'killed', logit_bias: { ...asciiBias(), 0: -100 } };
  const t1 = await api(a, 'POST', '/v1/completions', { ...base, prompt: 'Once upon a time', max_tokens: 8 });
  assert.equal(t1.status, 200, t1.text);
  const stored = Number(cli('HGET', 'metastate:{killed}:state', 'n').trim());
  assert.ok(stored > 0, 'turn 1 stored');
  const prompt2 = 'Once upon a time' + t1.json.choices[0].text + ' and';
  const s = await streamUntil(a, { ...base, prompt: prompt2, max_tokens: 100000 }, 3);
  assert.ok(s.got >= 3, 'the stream started');
  assert.notEqual(cli('EXISTS', 'metastate:{killed}:lease').trim(), '0', 'A holds the lease mid-stream');
  a.proc.kill('SIGKILL');
  await a.exited;
  s.reader.cancel().catch(() => {});
  // B waits for the dead replica's lease to expire, then resumes from turn 1.
  const t2 = await api(b, 'POST', '/v1/completions', { ...base, prompt: prompt2, max_tokens: 8 });
  assert.equal(t2.status, 200, t2.text);
  assert.equal(t2.json.session_warning, undefined);
  assert.equal(t2.json.usage.prompt_tokens_details.cached_tokens, stored,
    'resumed from the last stored version (turn 1 in full)');
  assert.ok((await metrics(b)).metastate_store_lease_waits_total > 0, 'B waited for the lease');
  await b.stop('SIGKILL');
});

test('a generation much longer than the lease keeps it (renewed): the other replica waits for the whole turn', async () => {
  // The lease is short against the turn but not so short that a busy host's
  // scheduling delays (CI, a loaded machine) miss a renewal: 1.5 s, a third
  // of it between renewals, against a turn of 2500 tokens.
  const lease = ['--state-store', storeUrl(), '--lease-ms', String(1500 * SLOW)];
  const a = await startServer({ args: lease }), b = await startServer({ args: lease });
  servers.push(a, b);
  const base = { model: MODEL_NAME, temperature: 0, session_id: 'long', logit_bias: { ...asciiBias(), 0: -100 } };
  const s = await streamUntil(a, { ...base, prompt: 'A long story', max_tokens: 2500 }, 2);
  const tB = api(b, 'POST', '/v1/completions', { ...base, prompt: 'A long story', max_tokens: 4 });
  let text = '';
  for (;;) { const { value, done } = await s.reader.read(); if (done) break; text += new TextDecoder().decode(value); }
  const aDone = Date.now();
  assert.match(text, /\[DONE\]/);
  const rb = await tB;
  assert.equal(rb.status, 200, rb.text);
  assert.ok(Date.now() >= aDone, 'B finished after A');
  assert.doesNotMatch(a.stderr(), /renewing the lease failed|not stored/, a.stderr());
  assert.ok(rb.json.usage.prompt_tokens_details.cached_tokens > 0, 'B found A\'s stored turn');
  assert.ok((await metrics(b)).metastate_store_lease_waits_total > 0, 'B waited');
  assert.equal((await metrics(a)).metastate_store_errors_total, 0);
  for (const x of [a, b]) assert.equal((await x.stop()).code, 0, x.stderr());
});

test('redis stopped: session requests get 503 store_unavailable, others are served; restarted: sessions resume', async () => {
  const a = await replica();
  const msgs = [{ role: 'user', content: 'Remember me' }];
  const r1 = await chat(a, msgs, 'outage');
  assert.equal(r1.status, 200, r1.text);
  await stopRedis();
  const r2 = await chat(a, [...msgs, { role: 'assistant', content: r1.json.choices[0].message.content },
    { role: 'user', content: 'Still there' }], 'outage');
  assert.equal(r2.status, 503, r2.text);
  assert.equal(r2.json.error.code, 'store_unavailable');
  assert.ok(Number(r2.headers.get('retry-after')) > 0);
  const plain = await chat(a, msgs, null);
  assert.equal(plain.status, 200, 'requests without a session are served');
  const h = await api(a, 'GET', '/health');
  assert.equal(h.status, 200);
  assert.equal(h.json.store, 'unavailable', h.text);
  assert.equal((await api(a, 'GET', '/v1/sessions/outage')).status, 503);
  assert.equal((await metrics(a)).metastate_store_up, 0);
  assert.ok((await metrics(a)).metastate_store_errors_total > 0);
  redis = await startRedis();
  const r3 = await chat(a, [...msgs, { role: 'assistant', content: r1.json.choices[0].message.content },
    { role: 'user', content: 'Still there' }], 'outage');
  assert.equal(r3.status, 200, r3.text);
  assert.ok(r3.json.usage.prompt_tokens_details.cached_tokens > 0, 'resumed from the stored session');
  assert.equal((await api(a, 'GET', '/health')).json.store, 'ok');
  assert.equal((await a.stop()).code, 0, a.stderr());
});

test('a corrupt value and a value from another model are rejected and the session restarts', async () => {
  const a = await replica();
  const other = await startServer({ model: tinyModel(2), args: replicaArgs() });
  servers.push(other);
  const msgs = [{ role: 'user', content: 'Keep this' }];
  const next = (r) => [...msgs, { role: 'assistant', content: r.json.choices[0].message.content },
    { role: 'user', content: 'And this' }];
  // A flipped byte inside the stored record (the CRC catches it).
  const r1 = await chat(a, msgs, 'corrupt');
  assert.equal(r1.status, 200);
  cli('EVAL', "local r = redis.call('HGET', KEYS[1], 'r') " +
    "local b = string.byte(r, 300) " +
    "redis.call('HSET', KEYS[1], 'r', string.sub(r, 1, 299) .. string.char((b + 1) % 256) .. string.sub(r, 301)) " +
    "redis.call('HSET', KEYS[1], 'v', 'tampered') return 1", '1', 'metastate:{corrupt}:state');
  const r2 = await chat(a, next(r1), 'corrupt');
  assert.equal(r2.status, 200, r2.text);
  assert.match(r2.json.session_warning, /checksum/);
  assert.equal(r2.json.usage.prompt_tokens_details.cached_tokens, 0, 'restarted');
  assert.equal(cli('EXISTS', 'metastate:{corrupt}:rejected').trim(), '1', 'the value is kept aside');
  const r3 = await chat(a, next(r1), 'corrupt');
  assert.equal(r3.json.session_warning, undefined);
  assert.ok(r3.json.usage.prompt_tokens_details.cached_tokens > 0, 'the restarted session works');
  // A session written by a replica serving another model.
  const f1 = await chat(other, msgs, 'foreign');
  assert.equal(f1.status, 200);
  const f2 = await chat(a, msgs, 'foreign');
  assert.equal(f2.status, 200, f2.text);
  assert.match(f2.json.session_warning, /another model|fingerprint/);
  assert.equal(f2.json.usage.prompt_tokens_details.cached_tokens, 0);
  await a.stop('SIGKILL'); await other.stop('SIGKILL');
});

test('export and import go through the store', async () => {
  const a = await replica(), b = await replica();
  const r1 = await chat(a, [{ role: 'user', content: 'Export me' }], 'exp');
  assert.equal(r1.status, 200);
  const ex = await api(b, 'GET', '/v1/sessions/exp/state');
  assert.equal(ex.status, 200, ex.text);
  const im = await api(a, 'PUT', '/v1/sessions/imp/state', ex.bytes, { 'Content-Type': 'application/octet-stream' });
  assert.equal(im.status, 200, im.text);
  const back = await api(b, 'GET', '/v1/sessions/imp/state');
  assert.equal(back.status, 200);
  assert.deepEqual(Buffer.from(back.bytes), Buffer.from(ex.bytes), 'imported on A, exported by B: the same state');
  for (const s of [a, b]) assert.equal((await s.stop()).code, 0, s.stderr());
});

/** A streamed responses.create through the SDK: the response its closing event carries. */
async function streamedResponse(oa, req) {
  let done = null;
  for await (const ev of await oa.responses.create({ ...req, stream: true }))
    if (ev.type === 'response.completed' || ev.type === 'response.incomplete') done = ev.response;
  return done;
}

test('a Responses chain alternates replicas: previous_response_id, retrieve and delete from any of them, as on one server', async () => {
  const a = await replica(), b = await replica();
  const one = await startServer(); // one server, records in its memory: the reference
  servers.push(one);
  const [oa, ob, o1] = [client(a), client(b), client(one)];
  const base = { model: MODEL_NAME, max_output_tokens: 6, temperature: 0 };
  const inputs = ['Hello there', 'What is up', 'Tell me more', 'Why so'];
  // Turns on A, B (non-streamed), A streamed, then B continuing the streamed one.
  const on = [oa, ob, oa, ob], streamed = [false, false, true, false];
  let prev = null, ref = null;
  const got = [];
  for (let i = 0; i < inputs.length; i++) {
    const req = { ...base, input: inputs[i] };
    const r = streamed[i] ? await streamedResponse(on[i], { ...req, previous_response_id: prev?.id })
      : await on[i].responses.create(prev ? { ...req, previous_response_id: prev.id } : req);
    const o = await o1.responses.create(ref ? { ...req, previous_response_id: ref.id } : req);
    const text = r.output[0].content[0].text;
    assert.equal(text, o.output[0].content[0].text, `turn ${i + 1}`);
    assert.equal(r.usage.input_tokens, o.usage.input_tokens, `turn ${i + 1} input tokens`);
    assert.equal(r.usage.input_tokens_details.cached_tokens, o.usage.input_tokens_details.cached_tokens,
      `turn ${i + 1} cached tokens`);
    if (i) assert.ok(r.usage.input_tokens_details.cached_tokens > 0, `turn ${i + 1} continued the session`);
    got.push(r);
    prev = r;
    ref = o;
  }
  const ids = got.map((r) => r.id);
  // Stored in Redis (expiring: no --session-ttl, so OpenAI's 30 days), read back by the other replica as sent.
  const ttl = Number(cli('TTL', `metastate:response:${ids[0]}`).trim());
  assert.ok(ttl > 29 * 86400 && ttl <= 30 * 86400, `TTL ${ttl}`);
  const first = await api(a, 'GET', `/v1/responses/${ids[0]}`), again = await api(b, 'GET', `/v1/responses/${ids[0]}`);
  assert.equal(first.status, 200, first.text);
  assert.deepEqual(again.json, first.json);
  assert.equal(again.json.id, ids[0]);
  const { output_text: _t, ...streamedBack } = await ob.responses.retrieve(ids[2]); // the SDK adds output_text
  assert.deepEqual(streamedBack, got[2], 'the streamed response as its closing event carried it');
  // Its input items too, from either replica alike.
  const items = (await ob.responses.inputItems.list(ids[2])).data;
  assert.deepEqual(items.map((i) => i.content[0].text), [inputs[2]]);
  assert.deepEqual((await oa.responses.inputItems.list(ids[2])).data, items);
  // Deleted through A: gone for B, as retrieve and as previous_response_id.
  assert.deepEqual(await oa.responses.delete(ids[1]), { id: ids[1], object: 'response.deleted', deleted: true });
  await assert.rejects(ob.responses.retrieve(ids[1]), (e) => e.status === 404 && e.code === 'not_found');
  await assert.rejects(ob.responses.create({ ...base, input: 'x', previous_response_id: ids[1] }),
    (e) => e.status === 404 && e.code === 'previous_response_not_found');
  assert.equal((await api(b, 'DELETE', `/v1/responses/${ids[1]}`)).status, 404);
  // store: false keeps nothing, here or there.
  const unstored = await oa.responses.create({ ...base, input: 'Forget me', store: false });
  assert.equal(cli('EXISTS', `metastate:response:${unstored.id}`).trim(), '0');
  assert.equal((await api(b, 'GET', `/v1/responses/${unstored.id}`)).status, 404);
  for (const s of [a, b, one]) assert.equal((await s.stop()).code, 0, s.stderr());
});

test('stored responses: a value that is not a record is a clear 500, redis stopped a 503', async () => {
  const a = await replica();
  cli('SET', 'metastate:response:resp_garbage', 'not a record');
  const g = await api(a, 'GET', '/v1/responses/resp_garbage');
  assert.equal(g.status, 500, g.text);
  assert.match(g.json.error.message, /resp_garbage.*could not be read/);
  await a.logged(/resp_garbage: the stored value .* is not a response record/);
  const p = await api(a, 'POST', '/v1/responses', { model: MODEL_NAME, input: 'x', previous_response_id: 'resp_garbage' });
  assert.equal(p.status, 500, p.text);
  const r1 = await api(a, 'POST', '/v1/responses', { model: MODEL_NAME, input: 'Keep me', max_output_tokens: 4 });
  assert.equal(r1.status, 200, r1.text);
  await stopRedis();
  for (const [method, path, body] of [['GET', `/v1/responses/${r1.json.id}`], ['DELETE', `/v1/responses/${r1.json.id}`],
    ['POST', '/v1/responses', { model: MODEL_NAME, input: 'x', previous_response_id: r1.json.id }]]) {
    const r = await api(a, method, path, body);
    assert.equal(r.status, 503, `${method} ${path}: ${r.text}`);
    assert.equal(r.json.error.code, 'store_unavailable');
  }
  // A response with its own session cannot even start its turn (the lease is in Redis): a 503 too.
  const fresh = await api(a, 'POST', '/v1/responses', { model: MODEL_NAME, input: 'x', max_output_tokens: 4 });
  assert.equal(fresh.status, 503, fresh.text);
  redis = await startRedis();
  const back = await api(a, 'GET', `/v1/responses/${r1.json.id}`);
  assert.equal(back.status, 200, back.text);
  assert.deepEqual(back.json, r1.json);
  assert.equal((await a.stop()).code, 0, a.stderr());
});

test('a turn whose record cannot be stored: 503 instead of the reply, and a stream ends in an error event, not response.completed', async () => {
  // A Redis user that may write sessions but only read responses: the turn
  // runs and its session is saved, then storing the record fails.
  cli('ACL', 'SETUSER', 'noresp', 'on', '>pw', '~metastate:{*', '%R~metastate:response:*', '+@all');
  const a = await startServer({ args: ['--state-store', `redis://noresp:pw@127.0.0.1:${redisPort}/0`,
    '--lease-ms', String(LEASE_MS * SLOW)] });
  servers.push(a);
  const req = { model: MODEL_NAME, input: 'Store me', max_output_tokens: 4, temperature: 0 };
  const r = await api(a, 'POST', '/v1/responses', req);
  assert.equal(r.status, 503, r.text);
  assert.equal(r.json.error.code, 'store_unavailable');
  const s = await fetch(`${a.url}/v1/responses`, { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ ...req, stream: true }) });
  assert.equal(s.status, 200);
  const text = await s.text();
  assert.match(text, /response\.output_text\.done/, 'the reply was streamed');
  assert.doesNotMatch(text, /response\.completed|response\.incomplete/);
  // OpenAI's error event of the Responses API (type, code, message, param,
  // sequence_number), the chat shape's error object beside them.
  const last = text.trim().split('\n\n').at(-1).split('\n');
  assert.equal(last[0], 'event: error', text);
  const ev = JSON.parse(last[1].replace(/^data: /, ''));
  assert.equal(ev.type, 'error');
  assert.equal(ev.code, 'store_unavailable');
  assert.match(ev.message, /^The response could not be stored/);
  assert.equal(ev.param, null);
  assert.equal(ev.sequence_number, JSON.parse(text.trim().split('\n\n').at(-2).split('\n')[1].slice(6)).sequence_number + 1);
  assert.deepEqual(ev.error, { message: ev.message, type: 'server_error', param: null, code: 'store_unavailable' });
  // The AI SDK's Responses model reports the server's reason (it rejected the
  // chat-shaped event as a chunk of no known type).
  const parts = [];
  const st = streamText({ model: createOpenAI({ baseURL: a.base, apiKey: 'x' }).responses(MODEL_NAME),
    prompt: 'Store me', maxOutputTokens: 4, temperature: 0, onError: () => {} });
  for await (const p of st.fullStream) if (p.type === 'error') parts.push(p.error);
  assert.equal(parts.length, 1, JSON.stringify(parts));
  assert.match(parts[0].message, /^The response could not be stored/, JSON.stringify(parts[0]));
  assert.equal(parts[0].code, 'store_unavailable');
  // The SDK turns it into an error; no closing event reached the client.
  const events = [];
  await assert.rejects((async () => {
    for await (const ev of await client(a).responses.create({ ...req, stream: true })) events.push(ev.type);
  })(), (e) => e.code === 'store_unavailable');
  assert.ok(events.includes('response.output_text.done') && !events.includes('response.completed'), events.join());
  // Each of the four (whole, raw stream, the two SDKs' streams) says why in the log.
  await a.logged(/(response resp_\w+ not stored: .*NOPERM[\s\S]*){4}/);
  // Unstored responses work for this user.
  const u = await api(a, 'POST', '/v1/responses', { ...req, store: false });
  assert.equal(u.status, 200, u.text);
  assert.equal((await a.stop()).code, 0, a.stderr());
  cli('ACL', 'DELUSER', 'noresp');
});

test('a store that answers slowly holds up only the requests that need it', async () => {
  const a = await replica();
  assert.equal((await api(a, 'GET', '/v1/sessions')).status, 200);
  // Redis holds every client's commands for a second: the session list waits
  // for it, /health (which needs no store) must not wait behind the list.
  cli('CLIENT', 'PAUSE', '1000', 'ALL');
  const order = [];
  const list = api(a, 'GET', '/v1/sessions').then((r) => { order.push('sessions'); return r; });
  await sleep(150);
  const health = api(a, 'GET', '/health').then((r) => { order.push('health'); return r; });
  const [l, h] = await Promise.all([list, health]);
  assert.equal(h.status, 200);
  assert.equal(l.status, 200, l.text);
  assert.deepEqual(order, ['health', 'sessions']);
  assert.equal((await a.stop()).code, 0, a.stderr());
});
