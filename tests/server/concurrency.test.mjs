// Many clients at once: 16 concurrent requests, streaming and not, with and
// without sessions. Every output must equal the one the same request gives
// alone (greedy), nothing may fail, and the server's RSS must settle.
// Prompts that arrive together share --prefill-chunk per step, the one with
// the fewest tokens left first.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, client, api, metrics, rssKiB, asciiBias, MODEL_NAME, IS_ASAN, SLOW } from './lib/server.mjs';

let srv, oa;
// Small ASan quarantine so RSS reflects live memory, not freed-block caching.
before(async () => {
  srv = await startServer({ args: ['--parallel', '8', '--queue', '32'],
    env: IS_ASAN ? { ASAN_OPTIONS: `${process.env.ASAN_OPTIONS || ''}:quarantine_size_mb=8` } : {} });
  oa = client(srv);
});
after(async () => { const e = await srv.stop(); assert.equal(e.code, 0, srv.stderr()); });

const N = 16;
const TOKENS = IS_ASAN ? 12 : 24;

function spec(i, round) {
  return {
    chat: i % 2 === 0,
    stream: i % 4 < 2,
    session: i % 3 === 0 ? `conc-${i}-${round}` : null,
    prompt: `Client ${i} asks question number ${i * 7 + 3}`,
  };
}

async function run(c, s) {
  const common = { model: MODEL_NAME, max_tokens: TOKENS, temperature: 0, logit_bias: asciiBias() };
  if (s.session) common.session_id = s.session;
  if (s.chat) {
    const body = { ...common, messages: [{ role: 'user', content: s.prompt }] };
    if (!s.stream) return (await c.chat.completions.create(body)).choices[0].message.content;
    let t = '';
    for await (const ch of await c.chat.completions.create({ ...body, stream: true })) t += ch.choices[0]?.delta?.content || '';
    return t;
  }
  const body = { ...common, prompt: s.prompt };
  if (!s.stream) return (await c.completions.create(body)).choices[0].text;
  let t = '';
  for await (const ch of await c.completions.create({ ...body, stream: true })) t += ch.choices[0]?.text || '';
  return t;
}

test('16 concurrent clients: no errors, no crossed outputs, stable RSS', async () => {
  // Reference outputs, one request at a time, without sessions.
  const ref = [];
  for (let i = 0; i < N; i++) ref.push(await run(oa, { ...spec(i, 'ref'), session: null, stream: false }));
  assert.ok(new Set(ref).size > 1, 'the prompts should produce different outputs');
  let rssAfterFirst = 0;
  const rounds = 4;
  for (let round = 0; round < rounds; round++) {
    const clients = Array.from({ length: N }, () => client(srv));
    const outs = await Promise.all(clients.map((c, i) => run(c, spec(i, round))));
    outs.forEach((o, i) => assert.equal(o, ref[i], `client ${i} round ${round}`));
    if (round === 0) rssAfterFirst = rssKiB(srv.proc.pid);
  }
  const m = await metrics(srv);
  assert.equal(m.metastate_active_sequences, 0);
  assert.equal(m.metastate_queue_length, 0);
  assert.equal(m['metastate_requests_total{route="/v1/completions",status="200"}'] +
    m['metastate_requests_total{route="/v1/chat/completions",status="200"}'], N * (rounds + 1));
  const growth = rssKiB(srv.proc.pid) - rssAfterFirst;
  // Sessions created per round (about 6 x 135 KB) plus allocator noise.
  assert.ok(growth < 24 * 1024 * SLOW, `RSS grew by ${growth} KiB after the first round`);
});

/** The replies to `burst` and to `running` alone (one at a time), then the
 * same requests together: `running` streaming, the burst sent once it has
 * its first token. Returns both sets of replies and the /metrics deltas. */
async function burstBesideStream(s, burst, running) {
  const c = client(s);
  const text = async (body) => (await c.completions.create(body)).choices[0].text;
  const alone = [];
  for (const b of burst) alone.push(await text(b));
  const runningAlone = await text(running);
  const before = await metrics(s);
  let streamed = '';
  const stream = await c.completions.create({ ...running, stream: true });
  const it = stream[Symbol.asyncIterator]();
  streamed += (await it.next()).value.choices[0]?.text || ''; // generating before the burst
  const rest = (async () => { for (let r = await it.next(); !r.done; r = await it.next()) streamed += r.value.choices[0]?.text || ''; })();
  const outs = await Promise.all(burst.map(text));
  await rest;
  const after = await metrics(s);
  return { alone, runningAlone, outs, streamed, d: (k) => after[k] - (before[k] || 0) };
}

// Eight long prompts at once, beside a running stream: each step runs at
// most --prefill-chunk prompt tokens in all (the prompts share it), so
// the stream is not held up by one chunk per prompt; every reply is the one
// its request gets alone.
test('a burst of long prompts shares --prefill-chunk per step', async () => {
  const CHUNK = 32;
  const s = await startServer({ args: ['--parallel', '9', '--prefill-chunk', String(CHUNK)] });
  try {
    const common = { model: MODEL_NAME, temperature: 0, logit_bias: asciiBias() };
    // About 7 chunks each (byte-level: one token per byte).
    const burst = Array.from({ length: 8 }, (_, i) => ({ ...common, max_tokens: 6,
      prompt: `Prompt ${i}: ${'a long prompt that needs several chunks of prefill. '.repeat(4)}` }));
    const running = { ...common, max_tokens: 64, prompt: 'A stream that runs through the burst.' };
    const { alone, runningAlone, outs, streamed, d } = await burstBesideStream(s, burst, running);
    outs.forEach((o, i) => assert.equal(o, alone[i], `burst request ${i}`));
    assert.equal(streamed, runningAlone, 'the running stream');
    const steps = d('metastate_step_tokens_count');
    const promptTokens = burst.reduce((a, b) => a + b.prompt.length, 0);
    assert.ok(d('metastate_step_tokens_sum') >= promptTokens, 'every prompt token ran in some step');
    // At most CHUNK prompt tokens plus one row per sequence (9) in any step.
    assert.equal(d('metastate_step_tokens_bucket{le="64"}'), steps,
      `steps of more than 64 tokens: ${steps - d('metastate_step_tokens_bucket{le="64"}')} of ${steps}`);
    assert.ok(steps >= promptTokens / CHUNK, `${steps} steps for ${promptTokens} prompt tokens`);
  } finally {
    const e = await s.stop();
    assert.equal(e.code, 0, s.stderr());
  }
});

// Short prompts that arrive together (chat turns, a burst of requests) ride
// the running stream's step together: one pass over the weights per step,
// not one per prompt, and every reply is the one its request gets alone.
test('a burst of short prompts is read in one pass per step', async () => {
  const s = await startServer({ args: ['--parallel', '9'] });
  try {
    const common = { model: MODEL_NAME, temperature: 0, logit_bias: asciiBias() };
    // About 40 tokens each (byte-level): three fit one --prefill-chunk of 128.
    const burst = Array.from({ length: 8 }, (_, i) => ({ ...common, max_tokens: 4,
      prompt: `Short prompt number ${i}, read with the others.` }));
    const running = { ...common, max_tokens: 48, prompt: 'A stream that runs through the burst.' };
    const { alone, runningAlone, outs, streamed, d } = await burstBesideStream(s, burst, running);
    outs.forEach((o, i) => assert.equal(o, alone[i], `burst request ${i}`));
    assert.equal(streamed, runningAlone, 'the running stream');
    const steps = d('metastate_step_tokens_count');
    // A step of more than 64 tokens ran two prompts' chunks or more (one is
    // under 48 with the nine sequences' rows).
    assert.ok(d('metastate_step_tokens_bucket{le="64"}') < steps, 'no step ran two prompts at once');
    assert.equal(d('metastate_model_passes_total'), steps, 'passes over the weights vs steps');
  } finally {
    const e = await s.stop();
    assert.equal(e.code, 0, s.stderr());
  }
});

// More prompts in a step than ride the batched pass together (16): the
// others run on their own in the same step, and every reply is still the
// one its request gets alone.
test('a burst of more short prompts than ride together gets the replies they get alone', async () => {
  const s = await startServer({ args: ['--parallel', '25'] });
  try {
    const common = { model: MODEL_NAME, temperature: 0, logit_bias: asciiBias() };
    // Six tokens each: 24 fit one --prefill-chunk of 128 by their tokens.
    const burst = Array.from({ length: 24 }, (_, i) => ({ ...common, max_tokens: 3,
      prompt: `Q${String(i).padStart(2, '0')}: ` }));
    const running = { ...common, max_tokens: 32, prompt: 'A stream that runs through the burst.' };
    const { alone, runningAlone, outs, streamed, d } = await burstBesideStream(s, burst, running);
    outs.forEach((o, i) => assert.equal(o, alone[i], `burst request ${i}`));
    assert.equal(streamed, runningAlone, 'the running stream');
    assert.ok(d('metastate_model_passes_total') >= d('metastate_step_tokens_count'));
  } finally {
    const e = await s.stop();
    assert.equal(e.code, 0, s.stderr());
  }
});

// Not first come first served: a short prompt admitted beside a long one
// gets its reply while the long one is still being read.
test('a short prompt beside a long one is not held until the long one is read', async () => {
  const s = await startServer({ args: ['--parallel', '2', '--prefill-chunk', '16'] });
  try {
    const common = { model: MODEL_NAME, temperature: 0, logit_bias: asciiBias(), max_tokens: 1 };
    const order = [];
    const long = api(s, 'POST', '/v1/completions', { ...common, prompt: 'x'.repeat(4000) }) // 250 chunks
      .then((r) => { assert.equal(r.status, 200, r.text); order.push('long'); });
    const short = api(s, 'POST', '/v1/completions', { ...common, prompt: 'a short one' })
      .then((r) => { assert.equal(r.status, 200, r.text); order.push('short'); });
    await Promise.all([long, short]);
    assert.deepEqual(order, ['short', 'long']);
  } finally {
    const e = await s.stop();
    assert.equal(e.code, 0, s.stderr());
  }
});

// Equal prompts that arrive together are read one after another, not in
// turns that would give every one its first token only at the end: the
// first reply comes after about a quarter of the burst's time (measured
// 0.23-0.37 of the last reply's; taking turns, 0.74-0.84).
test('a burst of equal prompts is answered one after another', async () => {
  const s = await startServer({ args: ['--parallel', '4', '--prefill-chunk', '16'] });
  try {
    const common = { model: MODEL_NAME, temperature: 0, logit_bias: asciiBias(), max_tokens: 1 };
    const t0 = performance.now();
    const done = await Promise.all([0, 1, 2, 3].map((i) =>
      api(s, 'POST', '/v1/completions', { ...common, prompt: `${i} ${'y'.repeat(1598)}` }) // 100 chunks
        .then((r) => { assert.equal(r.status, 200, r.text); return performance.now() - t0; })));
    done.sort((a, b) => a - b);
    assert.ok(done[0] < 0.6 * done[3], `first reply after ${done[0].toFixed(0)} ms, last after ${done[3].toFixed(0)} ms`);
  } finally {
    const e = await s.stop();
    assert.equal(e.code, 0, s.stderr());
  }
});
