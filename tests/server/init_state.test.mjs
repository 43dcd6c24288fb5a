// Initial states (state tuning): --init-state NAME=PATH loads a state-tuning
// file; requests pick it with "state"; sessions remember theirs (also in
// their files across restarts); bad names and bad files are refused.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import OpenAI from 'openai';
import { startServer, client, api, tmpDir, tinyModel, BIN, MODEL_NAME } from './lib/server.mjs';

// gen-model --preset tiny
const L = 2, C = 128, H = 2, N = 64;

/** Writes a safetensors file by hand: 8-byte LE header length, JSON header
 * padded with spaces to a multiple of 8, raw little-endian F32 data. */
function writeSafetensors(path, tensors) {
  const header = {};
  let off = 0;
  for (const t of tensors) {
    const n = t.data.length * 4;
    header[t.name] = { dtype: 'F32', shape: t.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const buf = Buffer.alloc(8 + json.length + off);
  buf.writeBigUInt64LE(BigInt(json.length), 0);
  buf.write(json, 8, 'latin1');
  let p = 8 + json.length;
  for (const t of tensors) {
    for (const v of t.data) { buf.writeFloatLE(v, p); p += 4; }
  }
  writeFileSync(path, buf);
}

/** A state-tuning file with a non-zero time_state for `layers` layers. */
function stateFile(path, layers = L, scale = 1) {
  const tensors = [];
  for (let l = 0; l < layers; l++) {
    const d = new Float32Array(H * N * N);
    for (let i = 0; i < d.length; i++) d[i] = scale * Math.sin(0.37 * i + l);
    tensors.push({ name: `blocks.${l}.att.time_state`, shape: [H, N, N], data: d });
  }
  writeSafetensors(path, tensors);
  return path;
}

const dir = tmpDir('init');
const tuned = stateFile(join(dir, 'tuned.safetensors'));
const other = stateFile(join(dir, 'other.safetensors'), L, -0.5);
const stateDir = join(dir, 'sessions');
let srv, oa;
before(async () => {
  srv = await startServer({ args: ['--init-state', `tuned=${tuned}`, '--init-state', `other=${other}`,
    '--state-dir', stateDir] });
  oa = client(srv);
});
after(async () => { if (srv) { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); } });

const base = { model: MODEL_NAME, max_tokens: 8, temperature: 0 };

test('/v1/models lists the initial states', async () => {
  const page = await oa.models.list();
  assert.deepEqual(page.data[0].initial_states, ['tuned', 'other']);
  assert.deepEqual((await oa.models.retrieve(MODEL_NAME)).initial_states, ['tuned', 'other']);
  assert.match(srv.stderr(), /initial state 'tuned' from .*tuned\.safetensors/);
});

test('greedy output from an initial state differs from zero and repeats', async () => {
  const zero = await oa.completions.create({ ...base, prompt: 'Once upon a time' });
  const a = await oa.completions.create({ ...base, prompt: 'Once upon a time', state: 'tuned' });
  const b = await oa.completions.create({ ...base, prompt: 'Once upon a time', state: 'tuned' });
  const c = await oa.completions.create({ ...base, prompt: 'Once upon a time', state: 'other' });
  assert.notEqual(a.choices[0].text, zero.choices[0].text);
  assert.equal(a.choices[0].text, b.choices[0].text);
  assert.notEqual(c.choices[0].text, a.choices[0].text);
  // chat and n > 1 start every choice from the state too
  const n2 = await oa.completions.create({ ...base, prompt: 'Once upon a time', state: 'tuned', n: 2 });
  assert.deepEqual(n2.choices.map((x) => x.text), [a.choices[0].text, a.choices[0].text]);
});

/** Two chat turns; opts1/opts2 are added to each request. */
async function twoTurns(opts1, opts2) {
  const messages = [{ role: 'user', content: 'Hello there' }];
  const r1 = await oa.chat.completions.create({ ...base, messages, ...opts1 });
  messages.push({ role: 'assistant', content: r1.choices[0].message.content },
    { role: 'user', content: 'Tell me more' });
  const r2 = await oa.chat.completions.create({ ...base, messages, ...opts2 });
  return { r1, r2, messages };
}

test('a session started from a state continues it and equals the full conversation', async () => {
  // Turn 2 names no state: the session keeps the one it started from.
  const s = await twoTurns({ session_id: 'tuned-1', state: 'tuned' }, { session_id: 'tuned-1' });
  assert.equal(s.r1.usage.prompt_tokens_details.cached_tokens, 0);
  assert.ok(s.r2.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(s.r2.usage));
  const full = await oa.chat.completions.create({ ...base, messages: s.messages, state: 'tuned' });
  assert.equal(s.r2.choices[0].message.content, full.choices[0].message.content);
  // Naming the same state again continues as well.
  const again = await oa.chat.completions.create({ ...base, messages: s.messages, session_id: 'tuned-1', state: 'tuned' });
  assert.ok(again.usage.prompt_tokens_details.cached_tokens > 0);
  assert.equal(again.choices[0].message.content, full.choices[0].message.content);
});

test('naming another state restarts the session from it', async () => {
  const s = await twoTurns({ session_id: 'switch-1' }, { session_id: 'switch-1', state: 'tuned' });
  assert.equal(s.r2.usage.prompt_tokens_details.cached_tokens, 0);
  const full = await oa.chat.completions.create({ ...base, messages: s.messages, state: 'tuned' });
  assert.equal(s.r2.choices[0].message.content, full.choices[0].message.content);
  // A prompt that does not continue it restarts from the session's own state.
  const miss = await oa.completions.create({ ...base, prompt: 'Something else', session_id: 'switch-1' });
  assert.equal(miss.usage.prompt_tokens_details.cached_tokens, 0);
  const ref = await oa.completions.create({ ...base, prompt: 'Something else', state: 'tuned' });
  assert.equal(miss.choices[0].text, ref.choices[0].text);
});

test('an unknown state is a 400 naming the parameter', async () => {
  const r = await api(srv, 'POST', '/v1/completions', { ...base, prompt: 'x', state: 'nope' });
  assert.equal(r.status, 400);
  assert.equal(r.json.error.type, 'invalid_request_error');
  assert.equal(r.json.error.param, 'state');
  assert.equal(r.json.error.code, 'state_not_found');
  assert.match(r.json.error.message, /'nope'.*'tuned', 'other'/);
  await assert.rejects(oa.chat.completions.create({ ...base, messages: [{ role: 'user', content: 'x' }],
    state: 'nope', session_id: 's' }), (e) => e instanceof OpenAI.BadRequestError && e.param === 'state');
});

test('a restarted server continues a session from its state; without that state it restarts', async () => {
  const p1 = 'The tuned session';
  const r1 = await oa.completions.create({ ...base, prompt: p1, session_id: 'persist-1', state: 'tuned' });
  const e = await srv.stop();
  srv = null;
  assert.equal(e.code, 0);
  const p2 = `${p1}${r1.choices[0].text} goes on`;
  // Same states from the environment (comma-separated list): the session continues.
  const s2 = await startServer({ args: ['--state-dir', stateDir],
    env: { METASTATE_INIT_STATE: `tuned=${tuned}, other=${other}` } });
  let want;
  try {
    const c2 = client(s2);
    assert.deepEqual((await c2.models.list()).data[0].initial_states, ['tuned', 'other']);
    const r2 = await c2.completions.create({ ...base, prompt: p2, session_id: 'persist-1' });
    assert.ok(r2.usage.prompt_tokens_details.cached_tokens > 0, JSON.stringify(r2.usage));
    want = (await c2.completions.create({ ...base, prompt: p2, state: 'tuned' })).choices[0].text;
    assert.equal(r2.choices[0].text, want);
  } finally {
    assert.equal((await s2.stop()).code, 0, s2.stderr());
  }
  // Without 'tuned' the session file is refused with a clear warning and the
  // session restarts cleanly from zero.
  const s3 = await startServer({ args: ['--state-dir', stateDir, '--init-state', `other=${other}`] });
  try {
    const r3 = await api(s3, 'POST', '/v1/completions', { ...base, prompt: p2, session_id: 'persist-1' });
    assert.equal(r3.status, 200, r3.text);
    assert.equal(r3.json.usage.prompt_tokens_details.cached_tokens, 0);
    assert.match(r3.json.session_warning, /initial state 'tuned'.*does not have/);
    const zero = await client(s3).completions.create({ ...base, prompt: p2 });
    assert.equal(r3.json.choices[0].text, zero.choices[0].text);
  } finally {
    assert.equal((await s3.stop()).code, 0, s3.stderr());
  }
});

test('a bad state file at startup: exit status 1 naming the file', () => {
  const deep = stateFile(join(dir, 'three-layers.safetensors'), 3);
  const port = String(20000 + Math.floor(Math.random() * 40000));
  const r = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--port', port, '--init-state', `deep=${deep}`],
    { timeout: 120000, encoding: 'utf8' });
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stderr, /cannot load initial state 'deep': .*three-layers\.safetensors.*3 layers/);
  const m = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--port', port, '--init-state', 'x=/nonexistent/s.pth'],
    { timeout: 120000, encoding: 'utf8' });
  assert.equal(m.status, 1, m.stderr);
  assert.match(m.stderr, /\/nonexistent\/s\.pth/);
  const u = spawnSync(BIN, ['serve', '--model', tinyModel(1), '--init-state', 'no-equals-sign'],
    { timeout: 10000, encoding: 'utf8' });
  assert.equal(u.status, 2);
  assert.match(u.stderr, /NAME=PATH/);
});
