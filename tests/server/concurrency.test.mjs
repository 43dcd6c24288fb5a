// Many clients at once: 16 concurrent requests, streaming and not, with and
// without sessions. Every output must equal the one the same request gives
// alone (greedy), nothing may fail, and the server's RSS must settle.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, client, metrics, rssKiB, asciiBias, MODEL_NAME, IS_ASAN, SLOW } from './lib/server.mjs';

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
