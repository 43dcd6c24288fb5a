// Sessions: turn-by-turn conversations reuse the saved state (cached_tokens)
// and give the same greedy output as the whole conversation sent at once;
// the pool spills to --state-dir, survives restarts, rejects corrupt and
// foreign files, exports and imports states as safetensors.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync, copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import OpenAI from 'openai';
import { startServer, client, api, asciiBias, metrics, tmpDir, tinyModel, MODEL_NAME, sleep } from './lib/server.mjs';

let srv, oa;
before(async () => { srv = await startServer(); oa = client(srv); });
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

const USER_TURNS = ['Hello there', 'What is a state?', 'Tell me more', 'Thanks, bye'];

/** Runs a chat turn by turn with session_id sid (or none); returns replies and usages. */
async function converse(c, sid, opts = {}) {
  const messages = [], replies = [], usages = [];
  for (const u of USER_TURNS) {
    messages.push({ role: 'user', content: u });
    const body = { model: MODEL_NAME, messages, max_tokens: 8, temperature: 0, ...opts };
    if (sid) body.session_id = sid;
    const r = await c.chat.completions.create(body);
    const reply = r.choices[0].message.content;
    messages.push({ role: 'assistant', content: reply });
    replies.push(reply);
    usages.push(r.usage);
  }
  return { replies, usages, messages };
}

test('chat turn by turn with a session equals the full conversation without one', async () => {
  for (const [tag, opts] of [['ascii', { logit_bias: asciiBias() }], ['bytes', {}]]) {
    const withS = await converse(oa, `chat-${tag}`, opts);
    const without = await converse(oa, null, opts);
    assert.deepEqual(withS.replies, without.replies, tag);
    assert.equal(withS.usages[0].prompt_tokens_details.cached_tokens, 0);
    for (let i = 1; i < USER_TURNS.length; i++) {
      const u = withS.usages[i];
      assert.ok(u.prompt_tokens_details.cached_tokens > 0, `${tag} turn ${i}: ${JSON.stringify(u)}`);
      assert.ok(u.prompt_tokens_details.cached_tokens < u.prompt_tokens);
      assert.equal(u.prompt_tokens, without.usages[i].prompt_tokens);
      assert.equal(without.usages[i].prompt_tokens_details.cached_tokens, 0);
    }
  }
});

test('completions: a prompt that extends the session reuses all of it', async () => {
  let prompt = 'The cat', prev = 0;
  for (let turn = 0; turn < 3; turn++) {
    const r = await oa.completions.create({ model: MODEL_NAME, prompt, max_tokens: 6, temperature: 0,
      logit_bias: asciiBias(), session_id: 'cmpl-1' });
    const ref = await oa.completions.create({ model: MODEL_NAME, prompt, max_tokens: 6, temperature: 0,
      logit_bias: asciiBias() });
    assert.equal(r.choices[0].text, ref.choices[0].text);
    assert.equal(r.usage.prompt_tokens_details.cached_tokens, prev);
    prompt += r.choices[0].text + '. Then';
    prev = Buffer.byteLength(prompt) - 6; // the session holds prompt + reply; '. Then' is new
  }
  // A prompt that does not continue the session restarts it from zero.
  const other = await oa.completions.create({ model: MODEL_NAME, prompt: 'Different', max_tokens: 2,
    temperature: 0, session_id: 'cmpl-1' });
  assert.equal(other.usage.prompt_tokens_details.cached_tokens, 0);
});

test('session id from the X-Session-ID header; n > 1 with a session is refused', async () => {
  const h = { 'X-Session-ID': 'hdr-1' };
  const body = { model: MODEL_NAME, prompt: 'abc', max_tokens: 2, temperature: 0 };
  const a = await api(srv, 'POST', '/v1/completions', body, h);
  assert.equal(a.status, 200);
  assert.equal(a.headers.get('x-session-id'), 'hdr-1');
  const b = await api(srv, 'POST', '/v1/completions', { ...body, prompt: 'abcd' }, h);
  assert.equal(b.json.usage.prompt_tokens_details.cached_tokens, 2); // from the checkpoint before 'c'
  const bad = await api(srv, 'POST', '/v1/completions', { ...body, n: 2, session_id: 'x' });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.param, 'n');
  const badId = await api(srv, 'POST', '/v1/completions', body, { 'X-Session-ID': '../etc' });
  assert.equal(badId.status, 400);
});

test('GET/DELETE /v1/sessions', async () => {
  await oa.completions.create({ model: MODEL_NAME, prompt: 'x', max_tokens: 1, session_id: 'listed' });
  const list = await api(srv, 'GET', '/v1/sessions');
  assert.equal(list.status, 200);
  assert.ok(list.json.data.some((s) => s.id === 'listed'));
  const one = await api(srv, 'GET', '/v1/sessions/listed');
  assert.equal(one.json.id, 'listed');
  assert.equal(one.json.tokens, 2);
  assert.equal((await api(srv, 'DELETE', '/v1/sessions/listed')).status, 200);
  const gone = await api(srv, 'GET', '/v1/sessions/listed');
  assert.equal(gone.status, 404);
  assert.equal(gone.json.error.code, 'session_not_found');
  assert.equal((await api(srv, 'DELETE', '/v1/sessions/listed')).status, 404);
});

test('export a state as safetensors and import it into another session', async () => {
  const H = 'A long shared history. ', Q = 'Question';
  await oa.completions.create({ model: MODEL_NAME, prompt: H, max_tokens: 1, temperature: 0,
    session_id: 'src', logit_bias: asciiBias() });
  const srcTokens = (await api(srv, 'GET', '/v1/sessions/src')).json.tokens;
  const exp = await api(srv, 'GET', '/v1/sessions/src/state');
  assert.equal(exp.status, 200);
  assert.equal(exp.headers.get('content-type'), 'application/octet-stream');
  const hdrLen = Number(Buffer.from(exp.bytes).readBigUInt64LE(0));
  const header = JSON.parse(Buffer.from(exp.bytes.slice(8, 8 + hdrLen)).toString());
  assert.ok('state.0.att_kv' in header && 'state.1.ffn_x_prev' in header, Object.keys(header).join());
  const imp = await api(srv, 'PUT', '/v1/sessions/dst/state', exp.bytes,
    { 'Content-Type': 'application/octet-stream' });
  assert.equal(imp.status, 200, imp.text);
  // dst continues from src's state: feeding Q on top equals src fed with its history + Q.
  const onDst = await oa.completions.create({ model: MODEL_NAME, prompt: Q, max_tokens: 6, temperature: 0, session_id: 'dst' });
  assert.equal(onDst.usage.prompt_tokens_details.cached_tokens, 0);
  const srcHist = await (async () => {
    // rebuild src's history text: H + its 1 generated token (ASCII)
    const r = await api(srv, 'GET', '/v1/sessions/src');
    return r.json.tokens;
  })();
  assert.equal(srcHist, srcTokens);
  const again = await oa.completions.create({ model: MODEL_NAME, prompt: H, max_tokens: 1, temperature: 0,
    logit_bias: asciiBias() });
  const onSrc = await oa.completions.create({ model: MODEL_NAME, prompt: H + again.choices[0].text + Q,
    max_tokens: 6, temperature: 0, session_id: 'src' });
  assert.equal(onSrc.usage.prompt_tokens_details.cached_tokens, srcTokens);
  assert.equal(onDst.choices[0].text, onSrc.choices[0].text);
  const junk = await api(srv, 'PUT', '/v1/sessions/dst2/state', 'not a tensor file',
    { 'Content-Type': 'application/octet-stream' });
  assert.equal(junk.status, 400);
  assert.equal((await api(srv, 'GET', '/v1/sessions/nope/state')).status, 404);
});

test('two requests on one session at once: both succeed, the second continues the first', async () => {
  const body = { model: MODEL_NAME, prompt: 'Same session', max_tokens: 20, temperature: 0,
    logit_bias: asciiBias(), session_id: 'race' };
  const [a, b] = await Promise.all([oa.completions.create(body), oa.completions.create(body)]);
  assert.equal(a.choices[0].text, b.choices[0].text);
  const cached = [a, b].map((r) => r.usage.prompt_tokens_details.cached_tokens).sort();
  assert.deepEqual(cached, [0, 'Same session'.length - 1]); // second resumed from the checkpoint
});

test('pool spills LRU states to --state-dir and restores them; survives a restart', async () => {
  const dir = tmpDir('state');
  // tiny model: one session = 2 states x 67584 bytes + tokens; 1 MiB holds ~7
  const s = await startServer({ args: ['--state-dir', dir, '--pool-mb', '1'] });
  const c = client(s);
  const first = {};
  try {
    for (let i = 0; i < 12; i++) {
      const r = await c.completions.create({ model: MODEL_NAME, prompt: `Session ${i} says`, max_tokens: 4,
        temperature: 0, logit_bias: asciiBias(), session_id: `pool-${i}` });
      first[i] = r.choices[0].text;
    }
    let m = await metrics(s);
    // Spills run on worker threads: wait until they have settled under the budget.
    for (let t = 0; t < 100 && (m.metastate_session_spills_total < 4 || m.metastate_pool_bytes > 1 << 20); t++) {
      await sleep(100);
      m = await metrics(s);
    }
    assert.ok(m.metastate_session_evictions_total >= 4, JSON.stringify(m));
    assert.ok(m.metastate_session_spills_total >= 4);
    assert.ok(m.metastate_pool_bytes <= 1 << 20);
    assert.ok(m.metastate_sessions_on_disk >= 4);
    assert.ok(readdirSync(dir).filter((f) => f.endsWith('.state')).length >= 4);
    // Session 0 was spilled first; continuing it restores it from disk.
    const p0 = `Session 0 says${first[0]} more`;
    const r0 = await c.completions.create({ model: MODEL_NAME, prompt: p0, max_tokens: 4, temperature: 0,
      logit_bias: asciiBias(), session_id: 'pool-0' });
    assert.equal(r0.usage.prompt_tokens_details.cached_tokens, Buffer.byteLength(p0) - 5);
    const ref = await c.completions.create({ model: MODEL_NAME, prompt: p0, max_tokens: 4, temperature: 0, logit_bias: asciiBias() });
    assert.equal(r0.choices[0].text, ref.choices[0].text);
    assert.ok((await metrics(s)).metastate_session_restores_total >= 1);
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
  assert.match(s.stderr(), /sessions persisted/);
  // Every session (in memory at exit or spilled) is on disk now; a new server continues them.
  assert.equal(readdirSync(dir).filter((f) => f.endsWith('.state')).length, 12);
  const s2 = await startServer({ args: ['--state-dir', dir] });
  try {
    const list = await api(s2, 'GET', '/v1/sessions');
    assert.equal(list.json.data.length, 12);
    assert.ok(list.json.data.every((x) => x.on_disk && !x.in_memory && x.tokens > 10), JSON.stringify(list.json.data[0]));
    const p = `Session 11 says${first[11]} again`;
    const r = await client(s2).completions.create({ model: MODEL_NAME, prompt: p, max_tokens: 4, temperature: 0,
      logit_bias: asciiBias(), session_id: 'pool-11' });
    assert.equal(r.usage.prompt_tokens_details.cached_tokens, Buffer.byteLength(p) - 6);
    const ref = await client(s2).completions.create({ model: MODEL_NAME, prompt: p, max_tokens: 4, temperature: 0, logit_bias: asciiBias() });
    assert.equal(r.choices[0].text, ref.choices[0].text);
  } finally {
    assert.equal((await s2.stop()).code, 0, s2.stderr());
  }
});

test('a new session starts from the zero state, also in the memory of a session evicted before it', async () => {
  // tiny model, 2 MiB (~15 sessions, one spare pair), no --state-dir: evicted
  // sessions are dropped and their states kept as the spare, which the next
  // new session takes.
  const s = await startServer({ args: ['--pool-mb', '2'] });
  const c = client(s);
  const base = { model: MODEL_NAME, max_tokens: 6, temperature: 0, logit_bias: asciiBias() };
  try {
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 20; i++)
        await c.completions.create({ ...base, prompt: `Filler ${round}-${i}: a long enough history`, session_id: `fill-${round}-${i}` });
      const m = await metrics(s);
      assert.ok(m.metastate_session_evictions_total >= 4 * (round + 1), JSON.stringify(m));
      const prompt = `Fresh ${round} begins`;
      const fresh = await c.completions.create({ ...base, prompt, session_id: `fresh-${round}` });
      const ref = await c.completions.create({ ...base, prompt });
      assert.equal(fresh.usage.prompt_tokens_details.cached_tokens, 0);
      assert.equal(fresh.choices[0].text, ref.choices[0].text, `round ${round}`);
    }
    // The spare is shown beside the budget, at most an eighth of it (made
    // again while idle, if the last new session took it).
    let m = await metrics(s);
    for (let t = 0; t < 50 && !(m.metastate_pool_spare_bytes > 0); t++) {
      await sleep(100);
      m = await metrics(s);
    }
    assert.ok(m.metastate_pool_spare_bytes > 0 && m.metastate_pool_spare_bytes <= (2 << 20) / 8, JSON.stringify(m));
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('a corrupt or foreign state file is rejected; that session restarts, others are intact', async () => {
  const dir = tmpDir('corrupt');
  const s = await startServer({ args: ['--state-dir', dir] });
  const c = client(s);
  const base = { model: MODEL_NAME, max_tokens: 3, temperature: 0, logit_bias: asciiBias() };
  const texts = {};
  for (const id of ['good', 'bad', 'alien']) {
    texts[id] = (await c.completions.create({ ...base, prompt: `Hi ${id}`, session_id: id })).choices[0].text;
  }
  assert.equal((await s.stop()).code, 0, s.stderr());
  // Flip one byte in the middle of 'bad'; replace 'alien' with a file made by another model.
  const badPath = join(dir, 'bad.state');
  const buf = readFileSync(badPath);
  buf[Math.floor(buf.length / 2)] ^= 0xff;
  writeFileSync(badPath, buf);
  const otherDir = tmpDir('other');
  const o = await startServer({ model: tinyModel(7), args: ['--state-dir', otherDir] });
  await client(o).completions.create({ ...base, model: 'tiny', prompt: 'Hi alien', session_id: 'alien' });
  assert.equal((await o.stop()).code, 0);
  copyFileSync(join(otherDir, 'alien.state'), join(dir, 'alien.state'));

  const s2 = await startServer({ args: ['--state-dir', dir] });
  try {
    const c2 = client(s2);
    for (const [id, why] of [['bad', /checksum/], ['alien', /another model|fingerprint/]]) {
      const p = `Hi ${id}${texts[id]} more`;
      const r = await api(s2, 'POST', '/v1/completions', { ...base, prompt: p, session_id: id });
      assert.equal(r.status, 200);
      assert.equal(r.json.usage.prompt_tokens_details.cached_tokens, 0);
      assert.match(r.json.session_warning, why);
      const ref = await c2.completions.create({ ...base, prompt: p });
      assert.equal(r.json.choices[0].text, ref.choices[0].text);
      assert.ok(existsSync(join(dir, `${id}.state.rejected`)));
    }
    const p = `Hi good${texts.good} more`;
    const g = await c2.completions.create({ ...base, prompt: p, session_id: 'good' });
    assert.equal(g.usage.prompt_tokens_details.cached_tokens, Buffer.byteLength(p) - 5);
    assert.equal((await metrics(s2)).metastate_state_file_errors_total, 2);
    assert.match(s2.stderr(), /state file rejected/);
  } finally {
    assert.equal((await s2.stop()).code, 0, s2.stderr());
  }
});
