// Server limits and policies that only show under load or at the edges:
// --max-tokens-cap, --max-sessions, what a chat request implies (the "\n\n"
// stop, end-of-text never drawn), a queued request passing its deadline,
// and a drain that runs out of time.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, client, api, metrics, MODEL_NAME, SLOW, sleep } from './lib/server.mjs';

const NL = String(10 + 1), EOT = '0', A = String(97 + 1); // byte-level ids: byte + 1

async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

// Far more prompt than --timeout (0.5 s) allows at 16 tokens per step:
// seconds of prefill (more under ASan), during which the deadline is not
// looked at (only between tokens of the reply).
// Long enough that its prefill outlasts the tests' 0.5 s limits by a wide
// margin (54k tokens took 0.55 s once prefill ran on the packed kernels).
const LONG_PROMPT = 'abcdefgh '.repeat(60000);

test('--max-tokens-cap clamps max_tokens; max_completion_tokens is honoured', async () => {
  const s = await startServer({ args: ['--max-tokens-cap', '3'] });
  try {
    const oa = client(s);
    const bias = { [EOT]: -100, [A]: 100 }; // 'a' forever: only a limit ends the reply
    const c = await oa.completions.create({ model: MODEL_NAME, prompt: 'x', max_tokens: 50, logit_bias: bias });
    assert.equal(c.usage.completion_tokens, 3);
    assert.equal(c.choices[0].text, 'aaa');
    assert.equal(c.choices[0].finish_reason, 'length');
    const d = await oa.completions.create({ model: MODEL_NAME, prompt: 'x', logit_bias: bias }); // default 16, capped
    assert.equal(d.usage.completion_tokens, 3);
    const ch = await oa.chat.completions.create({ model: MODEL_NAME, max_completion_tokens: 2, logit_bias: bias,
      messages: [{ role: 'user', content: 'x' }] });
    assert.equal(ch.usage.completion_tokens, 2);
    assert.equal(ch.choices[0].finish_reason, 'length');
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('chat: "\\n\\n" ends the reply and end-of-text is never drawn; completions do neither', async () => {
  const s = await startServer();
  try {
    const oa = client(s);
    const user = [{ role: 'user', content: 'hi' }];
    // Newlines forced: chat stops at the turn separator, completions go on.
    const chatNl = await oa.chat.completions.create({ model: MODEL_NAME, messages: user, max_tokens: 10,
      logit_bias: { [NL]: 100 } });
    assert.equal(chatNl.choices[0].finish_reason, 'stop');
    assert.equal(chatNl.choices[0].message.content, '');
    assert.equal(chatNl.usage.completion_tokens, 2);
    const cmplNl = await oa.completions.create({ model: MODEL_NAME, prompt: 'hi', max_tokens: 10,
      logit_bias: { [NL]: 100 } });
    assert.equal(cmplNl.choices[0].text, '\n'.repeat(10));
    assert.equal(cmplNl.choices[0].finish_reason, 'length');
    // End-of-text pushed up: a completion ends at once; chat never draws it.
    const cmplEot = await oa.completions.create({ model: MODEL_NAME, prompt: 'hi', max_tokens: 10,
      logit_bias: { [EOT]: 100 } });
    assert.equal(cmplEot.choices[0].finish_reason, 'stop');
    assert.equal(cmplEot.usage.completion_tokens, 0);
    const chatEot = await oa.chat.completions.create({ model: MODEL_NAME, messages: user, max_tokens: 6,
      logit_bias: { [EOT]: 100, [A]: 50 } });
    assert.equal(chatEot.choices[0].message.content, 'aaaaaa');
    assert.equal(chatEot.choices[0].finish_reason, 'length');
    // A request that gives "\n\n" itself gets it once, with the same effect.
    const both = await oa.chat.completions.create({ model: MODEL_NAME, messages: user, max_tokens: 10,
      logit_bias: { [NL]: 100 }, stop: ['\n\n', 'zz'] });
    assert.equal(both.choices[0].finish_reason, 'stop');
    assert.equal(both.choices[0].message.content, '');
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('--max-sessions: the least recently used idle session is forgotten; all busy gives 503', async () => {
  const s = await startServer({ args: ['--max-sessions', '2', '--parallel', '3'] });
  try {
    const oa = client(s);
    const one = (sid, extra = {}) => oa.completions.create({ model: MODEL_NAME, prompt: 'p', max_tokens: 1,
      session_id: sid, ...extra });
    await one('ms-a');
    await one('ms-b');
    await one('ms-c'); // the pool is full: ms-a, used least recently, goes
    const ids = (await api(s, 'GET', '/v1/sessions')).json.data.map((x) => x.id).sort();
    assert.deepEqual(ids, ['ms-b', 'ms-c']);
    assert.equal((await api(s, 'GET', '/v1/sessions/ms-a')).status, 404);
    assert.equal((await metrics(s)).metastate_session_evictions_total >= 1, true);
    const state = await api(s, 'GET', '/v1/sessions/ms-b/state');
    assert.equal(state.status, 200);
    // Two long streams hold both sessions; a request on a third one gets the
    // free slot but no room for its session.
    const streams = ['ms-b', 'ms-c'].map((sid) => {
      const ac = new AbortController();
      const p = fetch(`${s.base}/completions`, {
        method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: MODEL_NAME, prompt: 'p', max_tokens: 100000, stream: true,
          logit_bias: { [EOT]: -100 }, session_id: sid }),
      }).then(async (r) => { const rd = r.body.getReader(); await rd.read(); return rd; });
      return { ac, p };
    });
    await Promise.all(streams.map((x) => x.p));
    const full = await api(s, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'p', max_tokens: 1,
      session_id: 'ms-d' });
    assert.equal(full.status, 503);
    assert.equal(full.json.error.code, 'sessions_full');
    // An import that would add a session is refused the same way: the server's limit, not a bad upload.
    const imp = await api(s, 'PUT', '/v1/sessions/ms-d/state', state.bytes,
      { 'Content-Type': 'application/octet-stream' });
    assert.equal(imp.status, 503, imp.text);
    assert.equal(imp.json.error.code, 'sessions_full');
    assert.match(imp.json.error.message, /--max-sessions/);
    for (const x of streams) x.ac.abort();
    await waitFor(async () => (await metrics(s)).metastate_active_sequences === 0, 5000 * SLOW, 'streams to stop');
    const after = await api(s, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'p', max_tokens: 1,
      session_id: 'ms-d' });
    assert.equal(after.status, 200);
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('a request still queued at its deadline fails with 503 timeout', async () => {
  const s = await startServer({ args: ['--parallel', '1', '--timeout', '0.5', '--prefill-chunk', '16'] });
  try {
    const ac = new AbortController();
    const long = fetch(`${s.base}/completions`, {
      method: 'POST', signal: ac.signal, headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: MODEL_NAME, prompt: LONG_PROMPT, max_tokens: 1 }),
    }).then((r) => r.json()).catch(() => null);
    await waitFor(async () => (await metrics(s)).metastate_active_sequences === 1, 3000 * SLOW, 'the long prompt');
    const queued = await api(s, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: 'q', max_tokens: 1 });
    assert.equal(queued.status, 503, queued.text);
    assert.equal(queued.json.error.code, 'timeout');
    assert.equal(queued.headers.get('retry-after'), '5');
    // The long one is still in its prompt; its own deadline has passed, so if
    // it finishes before we stop it, it did so without a reply token.
    ac.abort();
    const first = await long;
    if (first && first.choices) assert.equal(first.usage.completion_tokens, 0);
    await waitFor(async () => (await metrics(s)).metastate_active_sequences === 0, 10000 * SLOW, 'the prefill to stop');
  } finally {
    assert.equal((await s.stop()).code, 0, s.stderr());
  }
});

test('a drain that outlasts --timeout cancels what is still running and exits cleanly', async () => {
  const s = await startServer({ args: ['--timeout', '0.5', '--prefill-chunk', '16'] });
  const long = api(s, 'POST', '/v1/completions', { model: MODEL_NAME, prompt: LONG_PROMPT, max_tokens: 1 })
    .catch((e) => ({ status: 'closed', error: e }));
  await waitFor(async () => (await metrics(s)).metastate_active_sequences === 1, 3000 * SLOW, 'the long prompt');
  const e = await s.stop('SIGTERM');
  assert.equal(e.code, 0, s.stderr());
  assert.match(s.stderr(), /drain timeout: cancelling 1 request\(s\)/);
  const r = await long;
  assert.notEqual(r.status, 200); // cancelled, not finished
});
